"""Stand-ins for the outside world, shipped so tests, the demo and the benchmarks share them:
an embedded AWS endpoint (moto's server) and downstream API simulators."""
