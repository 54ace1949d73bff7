.PHONY: run test lint format bench

run:  ## Run the portal with its embedded defaults (or whatever .env / the environment says)
	bin/run

test:  ## Run the whole test suite
	bin/test

lint:  ## Lint and check the formatting (ruff), as CI does
	bin/lint

format:  ## Apply ruff's safe fixes and format the code
	bin/lint --fix

bench:  ## Run the benchmarks (PostgreSQL and Redis on 127.0.0.1) and write docs/benchmarks.md
	bin/bench
