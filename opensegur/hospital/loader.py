"""Read a configuration directory into a :class:`HospitalConfig`, or every problem found, each in French with
its file and line, so that one run of ``opensegur config validate`` lists all there is to fix."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from opensegur.errors import OpenSegurError
from opensegur.hospital.checks import check_references
from opensegur.hospital.locate import PathPart, locate
from opensegur.hospital.model import CONFIG_FILES, ConfigFile, HospitalConfig

_BY_FIELD = {f.field: f for f in CONFIG_FILES}
_HINTS = {
    "client_secret": " : ne mettez jamais le secret dans ces fichiers, "
    "donnez le nom de la variable d'environnement qui le contient (client_secret_env)",
}


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int  # 0: the file as a whole
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}, ligne {self.line} : {self.message}"
            if self.line
            else f"{self.file} : {self.message}"
        )


class ConfigInvalid(OpenSegurError):
    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = list(problems)


def load_directory(directory: Path) -> HospitalConfig:
    """The configuration of ``directory``; :class:`ConfigInvalid` with every problem found otherwise."""
    if not directory.is_dir():
        raise ConfigInvalid([ConfigProblem(str(directory), 0, "répertoire de configuration introuvable")])
    known = [f.name for f in CONFIG_FILES]
    files: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    for path in sorted(directory.glob("*.toml")):
        if path.name not in known:
            problems.append(
                ConfigProblem(
                    path.name, 0, f"fichier inconnu ; les fichiers reconnus sont {', '.join(known)}"
                )
            )
            continue
        try:
            files[path.name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            problems.append(ConfigProblem(path.name, 0, "le fichier doit être encodé en UTF-8"))
    return load_files(files, problems)


def load_files(files: dict[str, str], problems: Sequence[ConfigProblem] = ()) -> HospitalConfig:
    """The configuration made of these texts (by file name), e.g. an applied version read back from the
    database; ``problems`` already found are reported with the ones found here."""
    found = list(problems)
    fields: dict[str, Any] = {}
    for spec in CONFIG_FILES:
        text = files.get(spec.name)
        if text is None:
            if spec.required:
                found.append(ConfigProblem(spec.name, 0, "fichier obligatoire absent du répertoire"))
            continue
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line = re.search(r"line (\d+)", str(exc))
            found.append(
                ConfigProblem(spec.name, int(line.group(1)) if line else 0, f"syntaxe TOML invalide ({exc})")
            )
            continue
        try:
            parsed = spec.model.model_validate(data)
        except ValidationError as exc:
            found += [_problem(spec, text, err) for err in exc.errors(include_url=False)]
            continue
        fields[spec.field] = getattr(parsed, spec.key) if spec.key else parsed
    if found:
        raise ConfigInvalid(found)
    config = HospitalConfig(**fields, files=dict(files))
    for path, message in check_references(config):
        spec = _BY_FIELD[str(path[0])]
        in_file = (spec.key, *path[1:]) if spec.key else path[1:]
        found.append(ConfigProblem(spec.name, locate(files[spec.name], in_file), message))
    if found:
        raise ConfigInvalid(found)
    return config


def _problem(spec: ConfigFile, text: str, err: ErrorDetails) -> ConfigProblem:
    path: tuple[PathPart, ...] = tuple(p for p in err["loc"] if p != "[key]")
    where = ".".join(str(p) for p in path if isinstance(p, str))
    message = _message(err, path)
    return ConfigProblem(spec.name, locate(text, path), f"{where} : {message}" if where else message)


def _message(err: ErrorDetails, path: tuple[PathPart, ...]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    last = path[-1] if path else ""
    if kind == "extra_forbidden":
        return f"clé inconnue « {last} »{_HINTS.get(str(last), '')}"
    if kind == "missing":
        return f"clé obligatoire « {last} » absente"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("enum", "literal_error"):
        what = "action inconnue" if "actions" in path else "valeur inconnue"
        return f"{what} « {value} » ; valeurs possibles : {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        if "[key]" in err["loc"]:
            return f"identifiant « {last} » invalide : lettres minuscules, chiffres et _ (ex. secretaire_medicale)"
        return f"« {value} » ne respecte pas le format attendu ({ctx.get('pattern', '')})"
    if kind == "string_too_short":
        return "valeur vide"
    if kind == "too_short":
        return "au moins un élément attendu"
    if kind == "string_type":
        return "texte attendu (entre guillemets)"
    if kind == "list_type":
        return "liste attendue ([…])"
    if kind in ("dict_type", "model_type"):
        return "table attendue"
    return f"valeur invalide ({err['msg']})"
