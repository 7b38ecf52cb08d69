"""The interactive API reference at ``/api/docs``, served from this server alone.

FastAPI's default page loads swagger-ui from a public CDN and runs an inline
script, on the same origin as the console's session cookie: that third-party
script could read ``/api/v1/console/session`` (and with it the CSRF token).
Here the swagger-ui files come from the ``swagger-ui-bundle-v2`` package, the page's
own start-up code is a file of ours, and ``/api/docs`` gets the console's
Content-Security-Policy (``'self'`` only), so no script from elsewhere can run.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

PREFIX = "/api/docs"
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>edgefleet API</title>
  <link rel="icon" href="{prefix}/assets/favicon-32x32.png">
  <link rel="stylesheet" href="{prefix}/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{prefix}/assets/swagger-ui-bundle.js"></script>
  <script src="{prefix}/start.js"></script>
</body>
</html>
"""
_START = """window.ui = SwaggerUIBundle({{
  url: "{openapi}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  withCredentials: true,
}});
"""


def install(app: FastAPI, *, openapi_url: str) -> None:
    """Serve the reference page, its start-up script and the bundled swagger-ui assets."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(f"{PREFIX}/assets", StaticFiles(directory=swagger_ui_path), name="api-docs")

    @app.get(PREFIX, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_PAGE.format(prefix=PREFIX))

    @app.get(f"{PREFIX}/start.js", include_in_schema=False)
    def start() -> Response:
        return Response(_START.format(openapi=openapi_url), media_type="application/javascript")
