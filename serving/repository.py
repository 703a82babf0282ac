"""The models the gateway serves now: public names (and aliases) -> routes, in the shape of KServe's
ModelRepository (`get`, `names`, `update`, `refresh`). The DataPlane owns one.

The config (`serving.config.GatewayConfig`) is what the operator wrote and never changes; this object is
what is served: the configured routes, or, when the config names no models, every model the default backend
lists (`Backend.list_models`), each under its own name plus the aliases the backend reports for it (e.g. a
model's name before a registry rename). An alias reaches the same route as the route's own name: same
backend model, same limits, one metrics label (the route's `public_name`); answers echo the name the
client used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping

from serving.backends.base import Backend
from serving.config import GatewayConfig, ModelRoute
from serving.errors import ModelNotFound

logger = logging.getLogger(__name__)


class ModelRepository:
    def __init__(self, config: GatewayConfig, backends: Mapping[str, Backend] | None = None,
                 refresh_interval_s: float = 1.0) -> None:
        self.config = config
        self.backends = backends or {}
        self.refresh_interval_s = refresh_interval_s  # unknown names refresh discovery at most this often
        self._routes: dict[str, ModelRoute] = {}  # route name -> route
        self._names: dict[str, str] = {}  # every public name (route names and aliases) -> route name
        self._last_refresh = -math.inf
        for route in config.models.values():
            self.update(route)

    @property
    def discovers(self) -> bool:
        """True when the served models come from the default backend (the config names none)."""
        return self.config.discover_models

    # --- lookup ------------------------------------------------------------------------------------
    def get(self, name: str) -> ModelRoute | None:
        """The route `name` (a route's own name or an alias) reaches, or None."""
        route_name = self._names.get(name)
        return None if route_name is None else self._routes[route_name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def names(self) -> list[str]:
        """The routes' own public names, sorted (aliases are not listed)."""
        return sorted(self._routes)

    def routes(self) -> list[ModelRoute]:
        return [self._routes[name] for name in self.names()]

    def names_of(self, name: str) -> tuple[str, ...]:
        """Every public name of the route `name` reaches (just `name` when it reaches none)."""
        route = self.get(name)
        return (name,) if route is None else route.names

    async def resolve(self, name: str) -> ModelRoute:
        """The route for `name`, refreshing discovery (rate-limited) when the name is unknown; ModelNotFound
        naming the served models otherwise."""
        if (name not in self._names and self.discovers
                and time.monotonic() - self._last_refresh > self.refresh_interval_s):
            await self.refresh()
        route = self.get(name)
        if route is None:
            raise ModelNotFound(f"unknown model '{name}'; served models: {', '.join(self.names()) or 'none'}")
        return route

    # --- changes -----------------------------------------------------------------------------------
    def update(self, route: ModelRoute) -> None:
        """Serve `route` under its name and aliases (replacing a route of the same name). A route's own name
        always wins over another route's alias; an alias already taken by another route is skipped."""
        old = self._routes.get(route.public_name)
        if old is not None:
            for alias in old.aliases:
                if self._names.get(alias) == old.public_name:
                    del self._names[alias]
        self._routes[route.public_name] = route
        self._names[route.public_name] = route.public_name
        for alias in route.aliases:
            owner = self._names.get(alias)
            if owner is not None and owner != route.public_name:
                logger.warning("alias %r of model %r is already a name of model %r; skipped",
                               alias, route.public_name, owner)
                continue
            self._names[alias] = route.public_name

    def add_alias(self, alias: str, name: str) -> ModelRoute:
        """Make `alias` reach the route `name` reaches (ModelNotFound when none). A discovered route's aliases
        are what its backend reports at the next refresh that sees them change."""
        route = self.get(name)
        if route is None:
            raise ModelNotFound(f"cannot alias unknown model '{name}'")
        if alias in route.names:
            return route
        updated = dataclasses.replace(route, aliases=(*route.aliases, alias))
        self.update(updated)
        return updated

    async def refresh(self) -> None:
        """Discovery: serve every model the default backend lists, under its own name and reported aliases.
        Configured routes are never replaced; models the backend stops listing stay routed (the backend
        then answers 404 for them)."""
        self._last_refresh = time.monotonic()
        if not self.discovers:
            return
        backend_name = self.config.default_backend
        for listed in await self.backends[backend_name].list_models():
            if listed.name in self.config.models:
                continue
            route = self.config.route(listed.name, backend=backend_name, aliases=listed.aliases)
            if self._routes.get(listed.name) != route:
                self.update(route)
