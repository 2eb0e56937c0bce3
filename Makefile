# OpenSégur — `make run` starts everything with the sandbox and demo data; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench profile conformance clean

$(BIN)/opensegur: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/opensegur

# The OHIF viewer's prebuilt files (npm @ohif/app, pinned with its integrity in viewer/ohif.json), beside the Python
# environment; without npm the platform runs without its viewer, and the viewer's page says so.
OHIF := $(VENV)/share/ohif/dist/index.html

$(OHIF): viewer/ohif.json $(BIN)/opensegur
	if command -v npm >/dev/null; then $(BIN)/python -m opensegur.ops.viewer_install viewer/ohif.json $(VENV)/share/ohif/dist; fi

# The sandbox on a fixed port: the manifests its remote DRIMbox published in the demo DMP (kept in var/) name its
# address, which must still answer after a restart.
run: install $(OHIF)
	OPENSEGUR_SANDBOX_PORT=8001 $(BIN)/opensegur serve --demo --data-dir var

lint: install
	$(BIN)/ruff check opensegur tests bench
	$(BIN)/mypy opensegur

# The OpenID Provider the SSO tests run (npm oidc-provider); without npm those tests are skipped (failed in CI).
OIDC_OP := tests/oidc_provider/node_modules/.package-lock.json

$(OIDC_OP): tests/oidc_provider/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/oidc_provider --no-audit --no-fund --loglevel=error; fi

test: lint $(OIDC_OP) $(OHIF)
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench

# A py-spy flame graph of each flow's benchmark, in bench/profiles/ (where the interpreter's time goes).
profile: install
	$(BIN)/python -m bench.profile

conformance: install
	$(BIN)/opensegur conformance report --out conformance-report

clean:
	rm -rf $(VENV) var *.egg-info
