"""Measuring choreo: bench (with the plain redis-py references of benchmarks/), soak, load with how
it learns that orders ended (endings) and rides through outages (outages), and the throwaway
redis-server they and the tests run on."""
