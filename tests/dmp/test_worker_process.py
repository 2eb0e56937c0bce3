"""`opensegur worker`: job workers beside a serving process, on the same database.

The serving platform runs with no workers of its own; a second platform started as a worker (``listen=False``, as
the command does) on the same SQLite file takes the jobs: the document received over MLLP by the first reaches
the sandbox DMP through the second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opensegur.config import Settings
from opensegur.server import Platform
from tests.dmp import helpers

schematron_cache = helpers.schematron_cache


async def test_a_worker_process_delivers_what_the_serving_process_received(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with helpers.running_platform(tmp_path, schematron_cache, workers=0) as (serving, dpi):
        dmp = serving.endpoints["dmp"]
        worker = Platform(
            Settings(
                data_dir=tmp_path,
                cache_dir=schematron_cache,
                zam_endpoint=serving.settings.zam_endpoint,
                dmp_iti41_url=dmp["iti41"],
                dmp_iti18_url=dmp["iti18"],
                dmp_iti43_url=dmp["iti43"],
                dmp_iti57_url=dmp["iti57"],
                dmp_signing_cert=dmp["test_pki"]["client_cert"],
                dmp_signing_key=dmp["test_pki"]["client_key"],
                job_backoff_base_s=0.1,
            )
        )
        runtime = await worker.start(listen=False)
        try:
            assert runtime.mllp_port is None and runtime.http_port is None
            number = helpers.new_number()
            sent = await helpers.send_raw(serving, helpers.mdm("initial", number))
            assert sent.code == "AA"
            doc = await helpers.wait_status(serving, helpers.uid(number), {"acknowledged"})
            assert doc.deliveries[0]["status"] == "delivered"
            assert [e["uniqueId"] for e in await helpers.entries_for(serving, helpers.uid(number))]
            assert helpers.zams_for(dpi, sent.cid)[0].status.success
        finally:
            await worker.stop()


def test_the_worker_command_is_offered() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opensegur.cli", "worker", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--db" in out and "--data-dir" in out
