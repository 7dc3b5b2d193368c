"""One FastAPI router per API resource."""
