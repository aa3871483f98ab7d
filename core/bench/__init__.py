"""Benchmarks, apart from the library: nothing in headhunter imports this package; the CLI's bench verb and python -m run it."""
