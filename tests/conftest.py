"""What every test run shares: an environment of its own, and a measure of its peak memory.

1. The caller's variables that change how engines, Ray or pdserve behave are removed before any test
   module is imported (a `VLLM_CPU_KVCACHE_SPACE=2` in a developer's shell once made the suite's engines
   take twice the memory and CI's machine run out of it). Tests set what they need themselves.
2. Tests may leave lines for the summary (`summary_line` fixture): the fault tests' counts, which the
   README quotes, are printed by every run, CI's included.
3. A sampler thread reads the machine's used memory (MemTotal - MemAvailable: every process, the
   suite's Ray workers and vLLM engines included) and counts live vLLM engine processes twice a second;
   the summary prints the peak, the test running then, and the most engines alive at once.
4. `--fuzz-examples N` sets how many cases each API fuzz test draws (an option, not a variable: the
   scrub above would remove a PDSERVE_* one, by design).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

# Variables a caller may have set that would change what the tests run (their values are not ours).
FOREIGN_PREFIXES = ("VLLM_", "RAY_", "OMP_", "PDSERVE_", "OTEL_", "HF_")
KEPT = {"PDSERVE_HOME", "PDSERVE_HELM"}  # set by scripts/test.sh: where the pulled model and helm binary live
SAMPLE_S = 0.5
DEFAULT_FUZZ_EXAMPLES = 100  # per API fuzz test in the suite (a few hundred per API); the long run: README
ENGINE_PROCESS = "VLLM::EngineCor"  # /proc/PID/comm keeps 15 characters of "VLLM::EngineCore"


def _scrub_environment() -> list[str]:
    removed = [name for name in os.environ if name.startswith(FOREIGN_PREFIXES) and name not in KEPT]
    for name in removed:
        del os.environ[name]
    return removed


REMOVED = _scrub_environment()


def _used_bytes() -> int:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields["MemTotal"] - fields["MemAvailable"]


def _total_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _num_engines() -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += (entry / "comm").read_text().strip() == ENGINE_PROCESS
            except OSError:
                continue
    return count


class MemorySampler:
    """Peak used memory of the machine while the suite runs, and what ran then."""

    def __init__(self) -> None:
        self.baseline = _used_bytes()
        self.peak = self.baseline
        self.peak_test = "(before the first test)"
        self.max_engines = 0
        self.max_engines_test = ""
        self.current = "(collection)"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pdserve-memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            used, engines = _used_bytes(), _num_engines()
            if used > self.peak:
                self.peak, self.peak_test = used, self.current
            if engines > self.max_engines:
                self.max_engines, self.max_engines_test = engines, self.current

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> list[str]:
        gib = 1 << 30
        return [f"peak memory used on this machine: {self.peak / gib:.1f} GiB of {_total_bytes() / gib:.1f} GiB "
                f"({self.baseline / gib:.1f} GiB before the suite), during {self.peak_test}",
                f"most vLLM engines alive at once: {self.max_engines}"
                + (f", during {self.max_engines_test}" if self.max_engines else "")]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-examples", type=int, default=DEFAULT_FUZZ_EXAMPLES,
                     help=f"cases each API fuzz test draws (default {DEFAULT_FUZZ_EXAMPLES})")


@pytest.fixture(scope="session")
def fuzz_examples(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--fuzz-examples")


_sampler: MemorySampler | None = None
_summary_lines: list[str] = []


@pytest.fixture(scope="session")
def summary_line():
    """`summary_line(text)`: print `text` in the run's closing summary."""
    return _summary_lines.append


def pytest_configure(config: pytest.Config) -> None:
    global _sampler
    if not hasattr(config, "workerinput"):
        _sampler = MemorySampler()


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    if _sampler is not None:
        _sampler.current = nodeid


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _sampler is None:
        return
    _sampler.stop()
    terminalreporter.section("memory")
    for line in _sampler.summary():
        terminalreporter.write_line(line)
    if REMOVED:
        terminalreporter.write_line(f"caller's variables ignored: {', '.join(sorted(REMOVED))}")
    if _summary_lines:
        terminalreporter.section("measured")
        for line in _summary_lines:
            terminalreporter.write_line(line)
