"""Load, validate and fingerprint a sweep configuration.

Validation is JSON Schema against `workflow/schemas/config.schema.yaml` with
defaults filled, plus the cross-references a schema cannot express. Every
problem a user can cause becomes one `ConfigError` line naming the key. This is
the only check: the Snakefile, the jobs and the CLI all run `validate`, and its
result passes the schema again (defaults and expanded identities included).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from fewstep.core.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _first_error(config: dict[str, Any], schema: dict[str, Any]) -> str | None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e)))
    if not errors:
        return None
    # The deepest error names the precise key; oneOf errors carry sub-errors.
    error = jsonschema.exceptions.best_match(errors)
    key = _key_path(error.absolute_path)
    if error.validator in ("required", "additionalProperties") and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        unexpected = (
            sorted(set(error.instance) - known) if error.schema.get("additionalProperties") is False else []
        )
        missing = [name for name in error.schema.get("required", []) if name not in error.instance]
        for name in unexpected:
            if "." in name and name.split(".")[0] in known:  # `--config wandb.mode=x`
                return f"{key}: {_dotted_override_hint(name, error.instance[name])}"
        for name in unexpected:
            close = difflib.get_close_matches(name, missing or sorted(known), n=1)
            if close:
                what = f"the required key {close[0]!r} is missing and " if close[0] in missing else ""
                return f"{key}: {what}{name!r} is not a key; did you mean {close[0]!r}? Rename it"
        if unexpected:
            return f"{key}: {unexpected[0]!r} is not a key; remove it or check its spelling"
    return f"{key}: {error.message.splitlines()[0]}"


def nested_override(name: str, value: Any) -> str:
    """`a.b.c` and its value as the nested override Snakemake's --config takes: ``a={b: {c: value}}``."""
    head, *rest = name.split(".")
    if isinstance(value, str):  # as YAML reads it, so the override shows no needless quotes
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    nested: Any = value
    for part in reversed(rest):
        nested = {part: nested}
    return f"{head}={yaml.safe_dump(nested, default_flow_style=True, width=10**6).strip()}"


def _dotted_override_hint(name: str, value: Any) -> str:
    return (
        f"{name!r} is not a key: Snakemake's --config takes no dotted keys; "
        f"write the nested override --config '{nested_override(name, value)}'"
    )


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` ("#/$defs/name"), keeping sibling keys such as `default`."""
    while "$ref" in spec:
        target = schema
        for part in spec["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        spec = {**target, **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec


def _applies(instance: dict[str, Any], condition: dict[str, list[Any]], properties: dict[str, Any]) -> bool:
    """Whether an `appliesTo` condition ({key: allowed values}) holds for `instance` (a key it
    does not set counts with its schema default)."""
    return all(
        instance.get(key, properties[key].get("default")) in allowed for key, allowed in condition.items()
    )


def fill_defaults(instance: Any, spec: dict[str, Any], schema: dict[str, Any], path: str = "") -> None:
    """Fill schema defaults into `instance` in place, at every depth.

    Like snakemake.utils.validate(set_default=True) for `properties`, and also
    for the entries of maps (`additionalProperties`) and lists (`items`). A property
    marked `appliesTo: {key: [values]}` (InfuseNet's settings: `kind: [infusenet]`) is
    filled only where it applies, and set where it does not is a one-line error: a config
    then stores, hashes and shows only what its adapter or backbone uses.
    """
    spec = _resolve(spec, schema)
    if isinstance(instance, dict):
        properties = spec.get("properties", {})
        for key, sub in properties.items():
            sub = _resolve(sub, schema)
            condition = sub.get("appliesTo")
            if condition and not _applies(instance, condition, properties):
                if key in instance:
                    where = ", ".join(f"{k} {' or '.join(map(str, v))}" for k, v in condition.items())
                    raise ConfigError(f"config {path}{key}: applies only where {where}; remove it")
                continue
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(instance[key], sub, schema, f"{path}{key}.")
        extra = spec.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in properties:
                    fill_defaults(value, extra, schema, f"{path}{key}.")
    elif isinstance(instance, list) and isinstance(spec.get("items"), dict):
        for index, value in enumerate(instance):
            fill_defaults(value, spec["items"], schema, f"{path.rstrip('.')}[{index}].")


def _types(spec: dict[str, Any]) -> set[str]:
    kind = spec.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _takes_string(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    """Whether a string can be valid here (typed string, a string enum, or an untyped spec)."""
    spec = _resolve(spec, schema)
    branches = spec.get("oneOf", []) + spec.get("anyOf", [])
    if branches:
        return any(_takes_string(branch, schema) for branch in branches)
    if "enum" in spec:
        return any(isinstance(value, str) for value in spec["enum"])
    return not _types(spec) or "string" in _types(spec)


def coerce_strings(instance: Any, spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """`instance` with strings parsed as YAML wherever the schema does not take a string.

    `snakemake --config seeds=[0,1]` reads nested values with YAML's BaseLoader, so every
    scalar inside a list or map arrives as a string ('0', '1'); this restores the types
    the schema asks for before validation. Strings the schema accepts stay as they are.
    """
    spec = _resolve(spec, schema)
    if isinstance(instance, str):
        if _takes_string(spec, schema):
            return instance
        try:
            return yaml.safe_load(instance)
        except yaml.YAMLError:
            return instance
    branches = spec.get("oneOf", []) + spec.get("anyOf", [])
    kind = "object" if isinstance(instance, dict) else "array" if isinstance(instance, list) else None
    for branch in branches:
        if kind in _types(_resolve(branch, schema)):
            return coerce_strings(instance, branch, schema)
    if isinstance(instance, dict):
        properties = spec.get("properties", {})
        extra = spec.get("additionalProperties")
        return {
            key: coerce_strings(value, properties[key], schema)
            if key in properties
            else coerce_strings(value, extra, schema)
            if isinstance(extra, dict)
            else value
            for key, value in instance.items()
        }
    if isinstance(instance, list) and isinstance(spec.get("items"), dict):
        return [coerce_strings(value, spec["items"], schema) for value in instance]
    return instance


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy of `config` with every default filled in."""
    schema = _schema()
    config = coerce_strings(copy.deepcopy(dict(config)), schema, schema)
    message = _first_error(config, schema)
    if message:
        raise ConfigError(f"config {message}")
    fill_defaults(config, schema, schema)
    config["prompts"] = _normalise_prompts(config["prompts"])
    config["identities"] = _expand_identities(config["identities"])
    _check_references(config)
    check_caches(config["accelerations"])
    return config


#: each cache schedule's own keys of an ``accelerations`` entry, with their defaults (filled in
#: only for that cache, so the entries of other caches, and their cells' hashes, stay as written)
CACHE_KEYS: dict[str, dict[str, int]] = {
    "none": {},
    "first_block": {},
    "taylorseer": {"cache_interval": 5, "cache_warmup": 3},
    "mag": {"cache_max_skips": 3, "cache_warmup": 3},
}


def check_caches(accelerations: dict[str, Any]) -> None:
    """Each entry holds only its cache's keys (their defaults filled in); TaylorSeer computes first."""
    every = {key for keys in CACHE_KEYS.values() for key in keys}
    for name, entry in accelerations.items():
        cache = entry["cache"]
        for key in sorted(every & (set(entry) - set(CACHE_KEYS[cache]))):
            users = " or ".join(c for c, keys in CACHE_KEYS.items() if key in keys)
            raise ConfigError(
                f"config accelerations.{name}.{key}: only cache: {users} uses it, not cache: {cache}; "
                "remove it or change the cache"
            )
        for key, default in CACHE_KEYS[cache].items():
            entry.setdefault(key, default)
        if cache == "taylorseer" and entry["cache_warmup"] < 1:
            raise ConfigError(
                f"config accelerations.{name}.cache_warmup: taylorseer extrapolates from computed steps, "
                "so at least the first step must run; set cache_warmup >= 1"
            )


def _normalise_prompts(prompts: list[Any]) -> list[dict[str, str]]:
    out = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            prompt = {"id": f"p{index:02d}", "text": prompt}
        out.append(dict(prompt))
    return out


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _expand_identities(identities: str | list[Any]) -> list[dict[str, str]]:
    """Turn every folder or glob entry into one {id, image} per picture (id = the file's stem)."""
    entries = [identities] if isinstance(identities, str) else identities
    out: list[dict[str, str]] = []
    origin: dict[str, str] = {}  # id -> the file (or entry) that gave it, for duplicate errors
    for index, entry in enumerate(entries):
        found = [_held_out(entry)] if isinstance(entry, dict) else _identity_folder(entry)
        if isinstance(entry, dict):
            _check_identity_pictures(entry, index)
        for identity in found:
            if identity["id"] in origin:
                raise ConfigError(
                    f"config identities: duplicated id {identity['id']!r} ({origin[identity['id']]} and "
                    f"{identity['image']}); give every identity a unique id (a folder's ids are file names)"
                )
            origin[identity["id"]] = identity["image"]
            out.append(identity)
    return out


def _held_out(entry: dict[str, Any]) -> dict[str, Any]:
    """An {id, images, condition} entry as {id, image, heldout}: `images[condition]` (default the
    first) conditions the adapter, the others are held out for scoring only."""
    identity = dict(entry)
    if ("image" in identity) == ("images" in identity):
        raise ConfigError(
            f"config identities: {identity['id']!r} needs either image (with optional heldout) or images "
            "(with optional condition), not both or neither"
        )
    if "images" not in identity:
        return identity
    images, index = list(identity.pop("images")), identity.pop("condition", 0)
    if index >= len(images):
        raise ConfigError(
            f"config identities: {identity['id']!r} has condition: {index} but {len(images)} images; "
            f"give an index below {len(images)}"
        )
    return {**identity, "image": images[index], "heldout": images[:index] + images[index + 1 :]}


def _pictures_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)


def _identity_folder(pattern: str) -> list[dict[str, Any]]:
    """One identity per picture in a folder or matching a glob, sorted by path; each one readable.
    A folder of folders gives one identity per subfolder: its first picture by name conditions
    the adapter, the others are held out."""
    import glob

    folder = Path(pattern).expanduser()
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if subfolders and not _pictures_of(folder):
        out = []
        for sub in subfolders:
            pictures = [entry["image"] for entry in _identity_folder(str(sub))]
            out.append({"id": _identity_id(sub), "image": pictures[0], "heldout": pictures[1:]})
        return out
    if folder.is_dir():
        files = _pictures_of(folder)
        where = f"folder {folder}"
    elif glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(str(folder), recursive=True) if Path(p).is_file())
        where = f"glob {pattern!r}"
    else:
        raise ConfigError(
            f"config identities: {pattern} is neither a folder nor a glob; give a folder of pictures, "
            "a glob such as faces/*.jpg, or {id, image} entries"
        )
    if not files:
        suffixes = ", ".join(PICTURE_SUFFIXES)
        raise ConfigError(f"config identities: {where} holds no pictures ({suffixes}); add one per identity")
    out = []
    for path in files:
        check_picture(str(path), "identities")
        out.append({"id": _identity_id(path), "image": str(path)})
    return out


def _identity_id(path: Path) -> str:
    """An identity id from a file's stem or a folder's name, as the schema's names are: a letter or
    digit first, then letters, digits and ``_.-``, at most 64 characters."""
    import re

    identity = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem if path.is_file() else path.name).strip("-._")[:64]
    if not identity:
        raise ConfigError(f"config identities: {path} has no letters or digits in its name; rename it")
    return identity


def _check_identity_pictures(entry: dict[str, Any], index: int) -> None:
    """Every picture an explicit identity entry names (conditioning and held out), each by its key."""
    if "images" in entry:
        for number, image in enumerate(entry["images"]):
            check_picture(image, f"identities[{index}].images[{number}]")
        return
    check_picture(entry["image"], f"identities[{index}].image")
    for number, image in enumerate(entry.get("heldout", [])):
        check_picture(image, f"identities[{index}].heldout[{number}]")


def check_picture(image: str, key: str) -> None:
    """A picture entry a job can read: a file whose header and data PIL verifies, or a builtin an
    installed package ships. Checked with the config, so a bad one stops the run before the DAG."""
    from fewstep.core.images import builtin_problem

    if image.startswith("builtin:"):
        problem = builtin_problem(image.removeprefix("builtin:"))
        if problem:
            raise ConfigError(f"config {key}: {problem}")
        return
    from PIL import Image, UnidentifiedImageError

    path = Path(image)
    if not path.is_file():
        raise ConfigError(f"config {key}: {image} does not exist; fix the path or remove the entry")
    try:
        with Image.open(path) as picture:
            picture.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ConfigError(
            f"config {key}: {path} cannot be read as a picture ({type(err).__name__}); replace or remove it"
        ) from None


def _duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({v for v in values if v in seen or seen.add(v)})


def _check_references(config: dict[str, Any]) -> None:
    dup = _duplicates([p["id"] for p in config["prompts"]])
    if dup:
        raise ConfigError(f"config prompts: duplicated id {dup[0]!r}; give every prompt a unique id")
    dup = _duplicates([r["id"] for r in config["references"]])
    if dup:
        raise ConfigError(f"config references: duplicated id {dup[0]!r}; give every reference a unique id")
    for index, reference in enumerate(config["references"]):
        check_picture(reference["image"], f"references[{index}].image")
    for index, block in enumerate(config["cells"]):
        for name in block["backbones"]:
            if name not in config["backbones"]:
                known = ", ".join(sorted(config["backbones"]))
                raise ConfigError(
                    f"config cells[{index}].backbones: unknown backbone {name!r}; known: {known}"
                )
        for name in block["adapters"]:
            if name not in config["adapters"]:
                known = ", ".join(sorted(config["adapters"]))
                raise ConfigError(f"config cells[{index}].adapters: unknown adapter {name!r}; known: {known}")
        for name in block["accelerations"]:
            if name != "eager" and name not in config["accelerations"]:
                known = ", ".join(["eager", *sorted(config["accelerations"])])
                raise ConfigError(
                    f"config cells[{index}].accelerations: unknown acceleration {name!r}; known: {known}"
                )
    if "eager" in config["accelerations"]:
        raise ConfigError("config accelerations.eager: the name eager means every switch off; rename it")


def load(paths: list[str | Path], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read YAML files in order (later keys win, as with --configfile) and validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged.update(read_config_file(path))
    merged.update(overrides or {})
    return validate(merged)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One config file's keys; a missing file or a YAML error is one line naming file and line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing --configfile") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML; fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    return data


def _plain(obj: Any) -> Any:
    """JSON's fallback: a read-only mapping (a `fewstep.core.study.Study` or its sections) as the
    dict it views, anything else as its text."""
    return dict(obj) if isinstance(obj, Mapping) else str(obj)


def fingerprint(obj: Any) -> str:
    """Stable short hash of any JSON-able value (dict key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: keys that say where files go or how runs are logged, not what is computed
LOCATION_KEYS = ("results_dir", "models_dir", "reports_dir", "local_weights", "wandb")


def config_hash(config: Mapping[str, Any]) -> str:
    """The provenance hash of a configuration: everything that shapes a result, not where it
    is stored (the same sweep in two folders has one hash)."""
    return fingerprint({k: v for k, v in config.items() if k not in LOCATION_KEYS})


def resolved_path(config: Mapping[str, Any], directory: Path) -> Path:
    """Where `write_resolved` puts `config`: <directory>/<hash>.yaml, named by its content."""
    return Path(directory) / f"{fingerprint(config)}.yaml"


def write_resolved(config: Mapping[str, Any], directory: Path) -> Path:
    """Write the validated config content-addressed (<hash>.yaml) and return its path.

    Jobs read the configuration from this file; its name changes only with the
    content, so an unchanged config never dirties anything.
    """
    path = resolved_path(config, directory)
    if not path.exists():
        from fewstep.core.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))
    return path


def _type_label(spec: dict[str, Any], schema: dict[str, Any]) -> str:
    spec = _resolve(spec, schema)
    if "enum" in spec:
        return " \\| ".join(f"`{value}`" for value in spec["enum"])
    if "oneOf" in spec:
        return " or ".join(_type_label(branch, schema) for branch in spec["oneOf"])
    kinds = sorted(_types(spec), key=lambda kind: kind == "null")
    if kinds == ["array"] and isinstance(spec.get("items"), dict):
        return f"list of {_type_label(spec['items'], schema)}"
    return " or ".join(kinds) or "any"


def _reference_rows(spec: dict[str, Any], schema: dict[str, Any], key: str) -> list[tuple[str, ...]]:
    """(key, type, default, description) for `spec` and every key below it."""
    spec = _resolve(spec, schema)
    default = f"`{json.dumps(spec['default'])}`" if "default" in spec else ""
    if default and "appliesTo" in spec:
        default += (
            " (" + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in spec["appliesTo"].items()) + ")"
        )
    description = " ".join(spec.get("description", "").split()).replace("|", "\\|")
    rows = [(f"`{key}`", _type_label(spec, schema), default, description)] if key else []
    for sub in [spec, *(_resolve(branch, schema) for branch in spec.get("oneOf", []))]:
        for name, child in sub.get("properties", {}).items():
            rows += _reference_rows(child, schema, f"{key}.{name}" if key else name)
        if isinstance(sub.get("additionalProperties"), dict):
            rows += _reference_rows(sub["additionalProperties"], schema, f"{key}.<name>")
        items = _resolve(sub["items"], schema) if isinstance(sub.get("items"), dict) else {}
        for branch in [items, *(_resolve(b, schema) for b in items.get("oneOf", []))]:
            for name, child in branch.get("properties", {}).items():
                rows += _reference_rows(child, schema, f"{key}[].{name}")
    return rows


def reference_markdown() -> str:
    """config/README.md: every key of the schema with its type, default and meaning."""
    schema = _schema()
    lines = [
        "# Configuration keys",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by `fewstep config-reference`",
        "(`tests/test_config.py` keeps it current); edit the schema, not this page.",
        "`config.yaml` is the study, `config/demo.yaml` the offline demo. `<name>` stands for",
        "an entry of a map, `[]` for each element of a list.",
        "",
        f"Required at the top level: {', '.join(f'`{key}`' for key in schema['required'])}.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for row in _reference_rows(schema, schema, ""):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
