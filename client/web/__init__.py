"""Cairn's web app for people, served by `cairn serve` at `/` beside the API (docs/web-app.md).

Server-rendered pages (Jinja2 templates, autoescaped) with one small plain-JavaScript module; sessions
in the API's database; every run reached through the API's own route functions and tenant checks.

Must never: load anything from another origin at run time (every asset is served from static/), or
reach a run except through client/server/routes.py's checks.
"""
