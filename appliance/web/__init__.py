"""The bedside page and its JSON API, served by the appliance process on its own thread (appliance.web.server)."""
