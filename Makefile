.PHONY: run test bench

run:  ## Run the portal with its embedded defaults (or whatever .env / the environment says)
	bin/run

test:  ## Run the whole test suite
	bin/test

bench:  ## Run the benchmarks (PostgreSQL and Redis on 127.0.0.1) and write docs/benchmarks.md
	bin/bench
