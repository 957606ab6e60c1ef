"""`kb web`: the HTTP API and the search, document and review pages, in one FastAPI process.

The process holds only what it loaded (the backbone, the embed adapter of the live index, the index);
everything else is read from the database per request, so several processes can share one database and
one KB_HOME. Module map: settings.py (environment), engine.py (the searcher and its hot-swap),
auth.py (who is asking, cookies, CSRF), deps.py (per-request session and caller), views.py (the data the
pages and the API share), api.py and pages.py (the routes), app.py (assembly, security headers, errors),
server.py (uvicorn).
"""
