"""``webhooks console``: support's and operators' pages over the CLI's Redis data.

Modules: :mod:`.auth` (users, roles, CSRF), :mod:`.queries` and :mod:`.pages`
(what each page shows), :mod:`.chart`, :mod:`.app` (Flask routes) and
:mod:`.server` (waitress). Nothing is imported here, so the settings can use
:mod:`.auth` without loading Flask into every worker.
"""
