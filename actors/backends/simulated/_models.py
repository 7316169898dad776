"""The simulated Ollama's model routes: the catalog (``/api/tags``, ``/api/ps``,
``/api/show``) and its management (``/api/pull``, ``/api/push``, ``/api/create``,
``/api/copy``, ``/api/delete``, ``HEAD``/``POST /api/blobs/:digest``), answered as
Ollama's server/routes.go, server/images.go and server/create.go do.

Progress streams carry Ollama's status lines: a pull is ``pulling manifest``, then
``pulling <digest[7:19]>`` with ``digest``, ``total`` and ``completed`` for each layer,
``verifying sha256 digest``, ``writing manifest`` and ``success``; a push is
``retrieving manifest``, ``pushing <digest[7:19]>`` per layer, ``pushing manifest`` and
``success``; a create is ``using existing layer sha256:...`` for the base's layers,
``creating new layer sha256:...`` for what it sets, ``writing manifest`` and ``success``.
With ``stream: false`` the answer is the last status alone. A pull or a push takes
``download_bytes_per_second`` on the server's clock (no time by default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from actors.backends.simulated._catalog import (
    InstalledModel,
    ModelProfile,
    canonical,
    details,
    digest,
    parameter_count,
)
from actors.backends.simulated._routes import OllamaRoutes, Progress
from actors.backends.simulated._wire import FOREVER_NS, HTTPError, rfc3339, seconds_ns

__all__ = ["ModelRoutes"]

_MODELS_DIR = "/root/.ollama/models"
_DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17}
_CREATE_FIELDS = ("system", "template", "license", "parameters", "messages")


class ModelRoutes(OllamaRoutes):
    """The model catalog and the routes that change it."""

    # --------------------------------------------------------------- catalog

    def tags(self, body: dict[str, Any]) -> None:
        """``/api/tags``: every model the server has."""
        models = [
            {
                "name": model.name,
                "model": model.name,
                "modified_at": rfc3339(model.modified_at_ns),
                "size": model.profile.size_bytes,
                "digest": model.digest,
                "details": _details(model),
            }
            for model in self.sim.catalog.all()
        ]
        self.send_json(200, {"models": models})

    def ps(self, body: dict[str, Any]) -> None:
        """``/api/ps``: the models loaded now, with their keep_alive expiry."""
        now_ns = seconds_ns(self.sim.clock.now())
        models = [
            {
                "name": model.name,
                "model": model.name,
                "size": model.profile.size_bytes,
                "digest": digest(model.name),
                "details": details(model.profile),
                "expires_at": rfc3339(
                    now_ns + FOREVER_NS
                    if model.expires_at is None
                    else seconds_ns(model.expires_at)
                ),
                "size_vram": model.profile.size_bytes,
                "context_length": model.context_length,
            }
            for model in self.sim.residency.resident()
        ]
        self.send_json(200, {"models": models})

    def show(self, body: dict[str, Any]) -> None:
        """``/api/show``: the model's modelfile, parameters, template, details, model_info
        and capabilities (server/routes.go GetModelInfo); empty fields are left out."""
        model = self.sim.lookup(_required(body, "model is required"))
        profile = model.profile
        system = body.get("system") or model.system
        info = {
            "license": "\n".join(model.license),
            "modelfile": _modelfile(model),
            "parameters": _parameters(model.parameters),
            "template": model.prompt_template,
            "system": system,
            "details": _details(model),
            "messages": [{"role": r, "content": c} for r, c in model.messages],
            "model_info": _model_info(profile),
            "projector_info": {"general.architecture": "clip"} if profile.vision else {},
            "capabilities": list(profile.capabilities),
            "modified_at": rfc3339(model.modified_at_ns),
        }
        always = ("details", "model_info", "capabilities", "modified_at")
        self.send_json(200, {k: v for k, v in info.items() if v or k in always})

    # ------------------------------------------------------------ management

    def pull(self, body: dict[str, Any]) -> None:
        """``/api/pull``: fetch a model of the registry (``pull model manifest: file does
        not exist`` for one it does not have) and add it to the catalog."""
        name = canonical(_required(body, "model is required"))
        self.send_progress(self._pull(name), _streams(body))

    def push(self, body: dict[str, Any]) -> None:
        """``/api/push``: send a model to the registry, from which it can be pulled again."""
        name = canonical(_required(body, "model is required"))
        self.send_progress(self._push(name), _streams(body))

    def create(self, body: dict[str, Any]) -> None:
        """``/api/create``: a model ``from`` another (pulled first if missing) or from GGUF
        ``files`` uploaded as blobs, with ``system``, ``template``, ``license``,
        ``parameters`` and ``messages`` of its own."""
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise HTTPError(400, "invalid model name")
        files = body.get("files")
        if files is not None and (
            not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values())
        ):
            raise HTTPError(400, "files must map file names to blob digests")
        for path, blob in (files or {}).items():
            if path.startswith("/") or ".." in path.split("/"):
                raise HTTPError(400, "file path must be relative")
            if not blob:
                raise HTTPError(400, "invalid digest format")
        source = body.get("from") or ""
        if not isinstance(source, str):
            raise HTTPError(400, "from must be a model name")
        if not source and not files:
            raise HTTPError(400, "neither 'from' or 'files' was specified")
        if files and not all(path.endswith(".gguf") for path in files):
            raise HTTPError(400, "unknown type")
        settings = _create_settings(body)
        self.send_progress(self._create(canonical(name), source, files or {}, settings),
                           _streams(body))  # fmt: skip

    def copy(self, body: dict[str, Any]) -> None:
        """``/api/copy``: the same model under another name (200 with no body)."""
        for field in ("source", "destination"):
            value = body.get(field)
            if not isinstance(value, str) or not _NAME.match(value):
                raise HTTPError(400, f"{field} {json.dumps(value or '')} is invalid")
        source = self.sim.catalog.get(canonical(body["source"]))
        if source is None:
            raise HTTPError(404, f"model {json.dumps(body['source'])} not found")
        target = canonical(body["destination"])
        now_ns = seconds_ns(self.sim.clock.now())
        self.sim.catalog.put(dataclasses.replace(source, name=target, modified_at_ns=now_ns))
        self.send_bytes(200, "text/plain; charset=utf-8", b"")

    def delete(self, body: dict[str, Any]) -> None:
        """``DELETE /api/delete``: forget a model (200 with no body; its runner, if loaded,
        stays until its keep_alive runs out, as in Ollama)."""
        model = body.get("model") or body.get("name") or ""
        if not isinstance(model, str) or not _NAME.match(model):
            raise HTTPError(400, f"name {json.dumps(model)} is invalid")
        if self.sim.catalog.remove(canonical(model)) is None:
            raise HTTPError(404, f"model '{model}' not found")
        self.send_bytes(200, "text/plain; charset=utf-8", b"")

    def head_blob(self, blob: str) -> None:
        """``HEAD /api/blobs/:digest``: 200 if the server has the blob, else 404."""
        if not _DIGEST.match(blob):
            raise HTTPError(400, "invalid digest format")
        if _normal(blob) not in self.sim.blobs:
            raise HTTPError(404, f"blob {json.dumps(blob)} not found")
        self.send_bytes(200, "text/plain; charset=utf-8", b"")

    def post_blob(self, blob: str, data: bytes) -> None:
        """``POST /api/blobs/:digest``: keep the upload if its sha256 is ``blob`` (201; 200
        if the server had it already; 400 on a mismatch)."""
        if not _DIGEST.match(blob):
            raise HTTPError(400, "invalid digest format")
        if _normal(blob) in self.sim.blobs:
            self.send_bytes(200, "text/plain; charset=utf-8", b"")
            return
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != _normal(blob):
            expected, got = json.dumps(blob), json.dumps(actual)
            raise HTTPError(400, f"digest mismatch, expected {expected}, got {got}")
        self.sim.blobs[actual] = data
        self.send_bytes(201, "text/plain; charset=utf-8", b"")

    # ------------------------------------------------------------ progress

    def _pull(self, name: str) -> Progress:
        yield {"status": "pulling manifest"}
        profile = self.sim.registry_profile(name)
        if profile is None:
            raise HTTPError(500, "pull model manifest: file does not exist")
        had = self.sim.catalog.get(name)
        due = self.sim.clock.now()  # a schedule, so one advance releases all that is due
        for layer, size in _layers(name, profile):
            if had is not None:
                yield _transfer("pulling", layer, size, size)
                continue
            yield _transfer("pulling", layer, size, 0)
            for part in (size // 2, size):
                due += self.sim.download_seconds(size // 2)
                self.pause_until(due)
                yield _transfer("pulling", layer, size, part)
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        now_ns = seconds_ns(self.sim.clock.now())
        self.sim.catalog.put(InstalledModel(name, profile, digest(name), modified_at_ns=now_ns))
        yield {"status": "success"}

    def _push(self, name: str) -> Progress:
        yield {"status": "retrieving manifest"}
        model = self.sim.catalog.get(name)
        if model is None:
            yield {"status": "couldn't retrieve manifest"}
            raise HTTPError(500, f"open {_manifest_path(name)}: no such file or directory")
        due = self.sim.clock.now()
        for layer, size in _layers(name, model.profile):
            yield _transfer("pushing", layer, size, 0)
            due += self.sim.download_seconds(size)
            self.pause_until(due)
            yield _transfer("pushing", layer, size, size)
        yield {"status": "pushing manifest"}
        self.sim.publish(name, model.profile)
        yield {"status": "success"}

    def _create(
        self, name: str, source: str, files: Mapping[str, str], settings: Mapping[str, Any]
    ) -> Progress:
        if source:
            base = self.sim.catalog.get(canonical(source))
            if base is None:
                yield from self._pull(canonical(source))
                base = self.sim.catalog.get(canonical(source))
            assert base is not None
            for layer, _ in _layers(base.name, base.profile):
                yield {"status": f"using existing layer {layer}"}
            profile, parent = base.profile, base.name
            base_settings = {f: getattr(base, f) for f in _CREATE_FIELDS}
        else:
            yield {"status": "parsing GGUF"}
            size = 0
            for blob in files.values():
                data = self.sim.blobs.get(_normal(blob))
                if data is None:
                    blob_path = f"{_MODELS_DIR}/blobs/{_normal(blob).replace(':', '-')}"
                    raise HTTPError(500, f"open {blob_path}: no such file or directory")
                size += len(data)
                yield {"status": f"using existing layer {_normal(blob)}"}
            profile, parent, base_settings = ModelProfile(size_bytes=max(size, 1)), "", {}
        changed = {f: v for f, v in settings.items() if v != base_settings.get(f)}
        for field, value in changed.items():
            layer = "sha256:" + hashlib.sha256(f"{field}:{value}".encode()).hexdigest()
            yield {"status": f"creating new layer {layer}"}
        yield {"status": "writing manifest"}
        model = InstalledModel(
            name,
            profile,
            hashlib.sha256(f"{name}:{parent}:{sorted(changed.items())}".encode()).hexdigest(),
            modified_at_ns=seconds_ns(self.sim.clock.now()),
            parent_model=parent,
            **{**base_settings, **settings},
        )
        self.sim.catalog.put(model)
        yield {"status": "success"}


# ----------------------------------------------------------------- helpers


def _required(body: Mapping[str, Any], message: str) -> str:
    """The request's ``model`` (or the deprecated ``name``); a 400 with ``message`` if none."""
    value = body.get("model") or body.get("name")
    if not isinstance(value, str) or not value.strip():
        raise HTTPError(400, message)
    return value


def _streams(body: Mapping[str, Any]) -> bool:
    """Whether the answer is a stream (the default) or one object (``stream: false``)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise HTTPError(400, "stream must be true or false")
    return stream is not False


def _normal(blob: str) -> str:
    """A digest as ``sha256:<hex>`` (Ollama takes ``sha256-<hex>`` too)."""
    return blob.replace("sha256-", "sha256:", 1)


def _layers(name: str, profile: ModelProfile) -> list[tuple[str, int]]:
    """A model's layers as a registry lists them: the weights, the template, the params."""
    return [
        (f"sha256:{digest(f'{name}:{part}')}", size)
        for part, size in (("model", profile.size_bytes), ("template", 1_024), ("params", 96))
    ]


def _transfer(verb: str, layer: str, total: int, completed: int) -> dict[str, Any]:
    """One progress line of a layer's download or upload (``completed`` left out at 0,
    as Go's omitempty does)."""
    line: dict[str, Any] = {"status": f"{verb} {layer[7:19]}", "digest": layer, "total": total}
    if completed:
        line["completed"] = completed
    return line


def _manifest_path(name: str) -> str:
    model, tag = name.rsplit(":", 1)
    namespace = model if "/" in model else f"library/{model}"
    return f"{_MODELS_DIR}/manifests/registry.ollama.ai/{namespace}/{tag}"


def _create_settings(body: Mapping[str, Any]) -> dict[str, Any]:
    """What ``/api/create`` sets on the model, checked and in InstalledModel's form."""
    settings: dict[str, Any] = {}
    for field in ("system", "template"):
        value = body.get(field)
        if value is not None:
            if not isinstance(value, str):
                raise HTTPError(400, f"{field} must be a string")
            settings[field] = value
    license_ = body.get("license")
    if license_ is not None:
        texts = [license_] if isinstance(license_, str) else license_
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(400, "license must be a string or a list of strings")
        settings["license"] = tuple(texts)
    parameters = body.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise HTTPError(400, "parameters must be an object")
        settings["parameters"] = tuple(parameters.items())
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            raise HTTPError(400, "messages must be a list of messages with a role")
        settings["messages"] = tuple((m["role"], str(m.get("content") or "")) for m in messages)
    return settings


def _details(model: InstalledModel) -> dict[str, Any]:
    return {**details(model.profile), "parent_model": model.parent_model}


def _modelfile(model: InstalledModel) -> str:
    """The Modelfile ``ollama show --modelfile`` prints for the model."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.name}",
        "",
        f"FROM {_MODELS_DIR}/blobs/sha256-{model.digest}",
        f'TEMPLATE """{model.prompt_template}"""',
    ]
    if model.system:
        lines.append(f'SYSTEM """{model.system}"""')
    lines += [f"PARAMETER {line}" for line in _parameter_lines(model.parameters)]
    lines += [f"MESSAGE {role} {json.dumps(content)}" for role, content in model.messages]
    lines += [f'LICENSE """{text}"""' for text in model.license]
    return "\n".join(lines) + "\n"


def _parameters(parameters: tuple[tuple[str, Any], ...]) -> str:
    """``/api/show``'s parameters: one ``name value`` line each, the name padded to 30."""
    return "\n".join(_parameter_lines(parameters, pad=30))


def _parameter_lines(parameters: tuple[tuple[str, Any], ...], pad: int = 0) -> list[str]:
    lines = []
    for key, value in parameters:
        for item in value if isinstance(value, list) else [value]:
            text = f"{item:g}" if isinstance(item, float) else json.dumps(item)
            lines.append(f"{key:<{pad}} {text}" if pad else f"{key} {text}")
    return lines


def _model_info(profile: ModelProfile) -> dict[str, Any]:
    """GGUF metadata as ``/api/show``'s ``model_info`` gives it (big arrays left empty)."""
    arch = profile.family
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.file_type": _FILE_TYPES.get(profile.quantization_level, 15),
        "general.parameter_count": parameter_count(profile.parameter_size),
        "general.quantization_version": 2,
        f"{arch}.block_count": 28,
        f"{arch}.context_length": profile.context_length,
        f"{arch}.embedding_length": profile.embedding_dimensions,
        f"{arch}.attention.head_count": 24,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [],
    }
    if profile.embedding_only:
        info[f"{arch}.pooling_type"] = 1
    return info
