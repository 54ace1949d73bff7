.PHONY: run test

run:  ## Run the portal with its embedded defaults (or whatever .env / the environment says)
	bin/run

test:  ## Run the whole test suite
	bin/test
