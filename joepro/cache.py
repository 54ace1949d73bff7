"""Django's Redis cache with one connection pool per process.

Under ASGI every request runs in a new context, and Django builds a new cache object (and with
it a new Redis connection pool) for each one: every request would open a fresh connection.
Sharing the client between cache objects of the same configuration keeps the pool.
"""

import threading

from django.core.cache.backends.redis import RedisCache
from django.utils.functional import cached_property

_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


class SharedPoolRedisCache(RedisCache):
    @cached_property
    def _cache(self):
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with _clients_lock:
            if key not in _clients:
                _clients[key] = self._class(self._servers, **self._options)
            return _clients[key]
