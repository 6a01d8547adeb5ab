"""The tests' throwaway redis-server: the same code `choreo bench` uses, which lives in the
package (choreo.measure.redis_server) so the installed command has it too."""

from choreo.measure.redis_server import Certificates, RedisServer, find_redis_server, free_port  # noqa: F401
