"""Stand-ins for the outside world, shared by the tests, the demo and the benchmarks: an
embedded AWS endpoint (moto's server) and downstream API simulators."""
