"""The web UI's static files (static/), served at /ui by `vxnet.api.routers.ui`.

Plain HTML, CSS and JavaScript with no build step: the page logs in through the Keystone subset,
uses the public REST API with the token, and follows `/ui/events` to stay current.
"""
