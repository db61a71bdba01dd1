"""Load an appraisal policy from a TOML file (the I/O half of ``atls_proxy.verify.policy``)."""

from __future__ import annotations

from pathlib import Path

from atls_proxy.errors import ConfigError
from atls_proxy.ops.files import read_capped
from atls_proxy.untrusted import toml_loads
from atls_proxy.verify.policy import MAX_KEY_FILE_SIZE, Policy, parse_policy

# A policy lists keys and a few dozen digests: a few KiB. 1 MiB is far beyond any real policy and
# stops a mistyped path (a log, an image) from being read into memory and parsed.
MAX_POLICY_FILE_SIZE = 1024 * 1024


def _read_bounded(path: Path, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes of a regular file, so the caller can tell an oversized
    file (ops/files.py: a FIFO or a device named in a policy must not hang). OSError passes."""
    return read_capped(path, limit)


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy at ``path``; key files resolve against its folder.

    Raises ``ConfigError``: key ``"policy"`` when the file is missing, unreadable, too large, not
    UTF-8 or not TOML (the message carries TOML's line and column), otherwise the dotted key that
    ``parse_policy`` names.
    """
    policy_path = Path(path)
    try:
        data = _read_bounded(policy_path, MAX_POLICY_FILE_SIZE)
    except OSError as exc:
        raise ConfigError(
            "policy", f"cannot read policy file {str(policy_path)!r}: {exc.strerror or exc}"
        ) from exc
    if len(data) > MAX_POLICY_FILE_SIZE:
        raise ConfigError(
            "policy",
            f"policy file {str(policy_path)!r} is larger than {MAX_POLICY_FILE_SIZE} bytes",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "policy", f"policy file {str(policy_path)!r} is not UTF-8: {exc}"
        ) from exc
    try:
        doc = toml_loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(
            "policy", f"policy file {str(policy_path)!r} is not valid TOML: {exc}"
        ) from exc

    base = policy_path.parent

    def read_file(name: str) -> bytes:
        # Relative names are relative to the policy file, not to the working directory.
        return _read_bounded(base / Path(name), MAX_KEY_FILE_SIZE)

    return parse_policy(doc, read_file, source=str(policy_path))


# The reload watcher stats these files; a trust folder with more is watched only in part.
MAX_WATCHED_TRUST_FILES = 512


def trust_files(path: str | Path) -> list[Path]:
    """The files a policy depends on: key files it names and the files in its trust folders.

    Used to notice changes (``reload_interval``); a policy that does not load yields ``[]`` (the
    reload itself then reports the error).
    """
    policy_path = Path(path)
    base = policy_path.parent
    named: list[Path] = []
    try:
        doc = toml_loads(_read_bounded(policy_path, MAX_POLICY_FILE_SIZE).decode("utf-8"))

        def read_file(name: str) -> bytes:
            named.append(base / Path(name))
            return _read_bounded(base / Path(name), MAX_KEY_FILE_SIZE)

        policy = parse_policy(doc, read_file, source=str(policy_path))
    except Exception:  # whatever stops the policy loading, the reload itself reports it
        return []
    out = list(named)
    for collateral, certs in policy.trust_dirs.values():
        for folder in (collateral, certs):
            if not folder:
                continue
            # The top level only, as the loaders read it (ops/*_files.py), and never more
            # entries than the cap: a folder such as /usr must not stall every interval.
            entries: list[Path] = []
            try:
                for p in (base / folder).iterdir():
                    entries.append(p)
                    if len(entries) > MAX_WATCHED_TRUST_FILES:
                        break
            except OSError:
                continue
            files = sorted(p for p in entries if p.is_file())
            out += files[: max(0, MAX_WATCHED_TRUST_FILES - len(out))]
    return out
