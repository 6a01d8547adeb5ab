"""A sign-up flow on choreo: the example `docs/own-service.md` walks through."""
