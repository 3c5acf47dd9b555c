"""json-map in Python: reshape JSON object payloads field by field.

The same transform as the Rust example `examples/json-map`, with the same
config keys, steps and error texts (only the JSON parser's own wording after
`payload is not JSON: ` differs):

    transforms:
      - name: normalise
        plugin: ../plugins/target/guests/python_json_map.wasm
        config:                       # every key is optional
          from_topic: { device_id: 1 }          # 1. set fields from MQTT topic levels (0-based)
          add: { source: mqtt, schema: 2 }      # 2. set constant fields (any JSON value)
          rename: { temp: temperature }         # 3. rename fields (all at once: {a: b, b: a} swaps)
          convert: { temperature: f_to_c }      # 4. convert units of numeric fields
          round: 2                              #    decimals kept by `convert` (default: all)
          drop: [debug, rssi]                   # 5. remove fields
          key_field: device_id                  # 6. Kafka key = this field's value
          kafka_topic: telemetry.normalised     # send to this Kafka topic instead of the sink's
          require: [temperature]                # 0. drop (filter out) messages lacking any of these

`require` is the one key the Rust example does not have: it shows the drop
path (`ok([])`). Guarantees: one result per input, in order; a message this
transform cannot map (not a JSON object, a missing topic level, a `convert`
field that is not a number, a missing `key_field`, or any unexpected Python
exception) is returned as an error, so the host dead-letters that message
alone and the rest of the batch goes on. Not guaranteed: the exact text of
JSON syntax errors, which is Python's.

Build: `bash scripts/build-guests.sh` (componentize-py, see ../../README.md).
"""

import json
import math

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import Message, TransformError

UNITS = {
    "f_to_c": lambda x: (x - 32.0) * 5.0 / 9.0,
    "c_to_f": lambda x: x * 9.0 / 5.0 + 32.0,
    "kelvin_to_c": lambda x: x - 273.15,
    "c_to_kelvin": lambda x: x + 273.15,
    "ms_to_s": lambda x: x / 1000.0,
    "s_to_ms": lambda x: x * 1000.0,
    "pa_to_hpa": lambda x: x / 100.0,
    "hpa_to_pa": lambda x: x * 100.0,
    "mv_to_v": lambda x: x / 1000.0,
}

KEYS = (
    "from_topic",
    "add",
    "rename",
    "convert",
    "round",
    "drop",
    "key_field",
    "kafka_topic",
    "require",
)


class MapError(Exception):
    """A message this transform cannot map: its text is the dead-letter reason."""


def type_name(value):
    """The JSON type of a parsed value, worded for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def round_half_away(x, decimals):
    """Rounds like Rust's f64::round (half away from zero), not like round()."""
    scale = 10.0**decimals
    a = abs(x * scale)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return math.copysign(r, x) / scale


def reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def to_json(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Settings:
    """The transform's `config:` map, checked once in init."""

    def __init__(self, text):
        try:
            config = json.loads(text)
        except ValueError as e:
            raise ValueError(f"invalid config: not JSON: {e}") from None
        if not isinstance(config, dict):
            raise ValueError(f"invalid config: expected a map, found {type_name(config)}")
        for key in config:
            if key not in KEYS:
                expected = ", ".join(f"`{k}`" for k in KEYS)
                raise ValueError(f"invalid config: unknown field `{key}`, expected one of {expected}")

        def mapping(key, check, what):
            value = config.get(key) or {}
            if not isinstance(value, dict):
                raise ValueError(f"invalid config: `{key}` must be a map, found {type_name(value)}")
            for name, item in value.items():
                if not check(item):
                    raise ValueError(f"invalid config: `{key}.{name}` must be {what}, found {to_json(item)}")
            return value

        def field_list(key):
            value = config.get(key) or []
            if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
                raise ValueError(f"invalid config: `{key}` must be a list of field names")
            return value

        def text_or_none(key):
            value = config.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"invalid config: `{key}` must be a string, found {type_name(value)}")
            return value

        is_level = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
        self.from_topic = sorted(mapping("from_topic", is_level, "a topic level (0, 1, ...)").items())
        self.add = mapping("add", lambda v: True, "any value")
        self.rename = sorted(mapping("rename", lambda v: isinstance(v, str), "a field name").items())
        units = " | ".join(UNITS)
        self.convert = sorted(mapping("convert", lambda v: v in UNITS, f"one of {units}").items())
        self.round = config.get("round")
        if self.round is not None and not is_level(self.round):
            raise ValueError("invalid config: `round` must be a number of decimals (0 to 12)")
        if self.round is not None and self.round > 12:
            raise ValueError("invalid config: `round` must be at most 12 decimals")
        self.drop = field_list("drop")
        self.require = field_list("require")
        self.key_field = text_or_none("key_field")
        self.kafka_topic = text_or_none("kafka_topic")
        targets = set()
        for _, new in self.rename:
            if new in targets:
                raise ValueError(f"invalid config: `rename` maps two fields to `{new}`")
            targets.add(new)
        if self.key_field is not None and self.key_field in self.drop:
            raise ValueError(
                f"invalid config: `key_field` `{self.key_field}` is also in `drop`, which runs first"
            )
        if self.kafka_topic == "":
            raise ValueError("invalid config: `kafka_topic` is empty")
        self.steps = ", ".join(k for k in KEYS if config.get(k) is not None) or "none (pass-through)"



def parse_object(payload):
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as e:
        raise MapError(f"payload is not UTF-8: {e}") from None
    except ValueError as e:
        raise MapError(f"payload is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise MapError(f"payload is JSON {type_name(value)}, expected a JSON object")
    return value


def convert(field, value, unit, decimals):
    if not is_number(value):
        raise MapError(f"field `{field}` is {type_name(value)}, expected a number to convert")
    y = UNITS[unit](float(value))
    if decimals is not None and math.isfinite(y):
        y = round_half_away(y, decimals)
    if not math.isfinite(y):
        raise MapError(f"field `{field}`: {value} does not convert to a finite number")
    return y


def map_message(s, msg):
    """Maps one message: a list of 0 or 1 messages, or MapError."""
    fields = parse_object(msg.payload)
    if any(f not in fields for f in s.require):
        return []
    levels = msg.topic.split("/")
    # 1. from_topic
    for field, level in s.from_topic:
        if level >= len(levels):
            raise MapError(f"topic `{msg.topic}` has no level {level} for field `{field}`")
        fields[field] = levels[level]
    # 2. add
    for field, value in s.add.items():
        fields[field] = value
    # 3. rename: take every old field out first, so renames do not see each other.
    moved = [(new, fields.pop(old)) for old, new in s.rename if old in fields]
    for new, value in moved:
        fields[new] = value
    # 4. convert
    for field, unit in s.convert:
        if field in fields:
            fields[field] = convert(field, fields[field], unit, s.round)
    # 5. drop
    for field in s.drop:
        fields.pop(field, None)
    # 6. key_field, kafka_topic
    if s.key_field is not None:
        value = fields.get(s.key_field)
        if value is None:
            raise MapError(f"key_field `{s.key_field}` is missing or null")
        msg.key = (value if isinstance(value, str) else to_json(value)).encode("utf-8")
    if s.kafka_topic is not None:
        msg.kafka_topic = s.kafka_topic
    msg.payload = to_json(fields).encode("utf-8")
    return [msg]


# The settings from init. Module state, not an attribute of Transformer:
# componentize-py makes a new Transformer object for every exported call.
SETTINGS = None


class Transformer(exports.Transformer):
    """The exported `transformer` interface."""

    def init(self, config: str) -> None:
        global SETTINGS
        try:
            SETTINGS = Settings(config)
        except ValueError as e:
            raise Err(str(e))
        log.log(log.Level.INFO, f"python json-map ready; steps: {SETTINGS.steps}")

    def process(self, batch: list[Message]):
        if SETTINGS is None:
            return [Err(TransformError("init was not called")) for _ in batch]
        results = []
        for msg in batch:
            try:
                results.append(Ok(map_message(SETTINGS, msg)))
            except MapError as e:
                results.append(Err(TransformError(str(e))))
            except Exception as e:  # a bug here must not trap the whole batch
                results.append(Err(TransformError(f"python json-map failed: {type(e).__name__}: {e}")))
        return results
