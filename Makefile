# The two commands of the README. Both install what they need first (as root, on Debian or
# Ubuntu) and are safe to run again.
.PHONY: demo test check bootstrap bench clean

bootstrap:
	./scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/meterguard demo

test: bootstrap
	.venv/bin/python -m pytest -ra

check: bootstrap
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

bench: bootstrap
	.venv/bin/python bench/accuracy.py
	.venv/bin/python bench/overhead.py
	.venv/bin/python bench/caps.py
	.venv/bin/python bench/ledger_report.py

clean:
	rm -rf .venv build *.egg-info .mypy_cache .ruff_cache .pytest_cache
