// json-map in JavaScript: reshape JSON object payloads field by field.
//
// The same transform as the Rust example `examples/json-map`, with the same
// config keys, steps and error texts (only the JSON parser's own wording after
// `payload is not JSON: ` differs):
//
//     transforms:
//       - name: normalise
//         plugin: ../plugins/target/guests/js_json_map.wasm
//         config:                       # every key is optional
//           from_topic: { device_id: 1 }          # 1. set fields from MQTT topic levels (0-based)
//           add: { source: mqtt, schema: 2 }      # 2. set constant fields (any JSON value)
//           rename: { temp: temperature }         # 3. rename fields (all at once: {a: b, b: a} swaps)
//           convert: { temperature: f_to_c }      # 4. convert units of numeric fields
//           round: 2                              #    decimals kept by `convert` (default: all)
//           drop: [debug, rssi]                   # 5. remove fields
//           key_field: device_id                  # 6. Kafka key = this field's value
//           kafka_topic: telemetry.normalised     # send to this Kafka topic instead of the sink's
//           require: [temperature]                # 0. drop (filter out) messages lacking any of these
//
// `require` is the one key the Rust example does not have: it shows the drop
// path (`ok([])`). Guarantees: one result per input, in order; a message this
// transform cannot map (not a JSON object, a missing topic level, a `convert`
// field that is not a number, a missing `key_field`, or any unexpected
// exception) is returned as an error, so the host dead-letters that message
// alone and the rest of the batch goes on. Not guaranteed: the exact text of
// JSON syntax errors, which is the JS engine's; a field order like the Rust
// example's except for integer-like field names ("1", "42"), which JS objects
// put first.
//
// Build: `bash scripts/build-guests.sh` (componentize-js, see ../../README.md).

import { log } from "sluice:transform/log@0.1.0"; // log(level, text)

const UNITS = {
  f_to_c: (x) => ((x - 32) * 5) / 9,
  c_to_f: (x) => (x * 9) / 5 + 32,
  kelvin_to_c: (x) => x - 273.15,
  c_to_kelvin: (x) => x + 273.15,
  ms_to_s: (x) => x / 1000,
  s_to_ms: (x) => x * 1000,
  pa_to_hpa: (x) => x / 100,
  hpa_to_pa: (x) => x * 100,
  mv_to_v: (x) => x / 1000,
};

const KEYS = [
  "from_topic",
  "add",
  "rename",
  "convert",
  "round",
  "drop",
  "key_field",
  "kafka_topic",
  "require",
];

/** A message this transform cannot map: its text is the dead-letter reason. */
class MapError extends Error {}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

/** The JSON type of a parsed value, worded for an error message. */
function typeName(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "boolean":
      return "a boolean";
    case "number":
      return "a number";
    case "string":
      return "a string";
    default:
      return "an object";
  }
}

const isMap = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isLevel = (v) => Number.isInteger(v) && v >= 0;
const has = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

/** Rounds like Rust's f64::round (half away from zero), not like Math.round. */
function roundHalfAway(x, decimals) {
  const scale = 10 ** decimals;
  const a = Math.abs(x * scale);
  let r = Math.floor(a);
  if (a - r >= 0.5) r += 1;
  return (Math.sign(x) || 1) * (r / scale);
}

/**
 * A converted number. JSON text like Rust's f64: an integer value keeps its
 * `.0` (100.0), as the Rust example writes it; JS numbers cannot tell 100
 * from 100.0, so numbers this transform did not convert are written as JS
 * writes them (an integer in, an integer out).
 */
class Float {
  constructor(x) {
    this.x = x;
  }
}

/** JSON text of one field value. */
function toJson(value) {
  if (value instanceof Float) {
    const x = value.x;
    return Number.isInteger(x) && Math.abs(x) < 1e16 ? `${x}.0` : JSON.stringify(x);
  }
  return JSON.stringify(value);
}

class Settings {
  constructor(text) {
    let config;
    try {
      config = JSON.parse(text);
    } catch (e) {
      throw new Error(`invalid config: not JSON: ${e.message}`);
    }
    if (!isMap(config)) {
      throw new Error(`invalid config: expected a map, found ${typeName(config)}`);
    }
    for (const key of Object.keys(config)) {
      if (!KEYS.includes(key)) {
        const expected = KEYS.map((k) => `\`${k}\``).join(", ");
        throw new Error(`invalid config: unknown field \`${key}\`, expected one of ${expected}`);
      }
    }
    const mapping = (key, check, what) => {
      const value = config[key] ?? {};
      if (!isMap(value)) {
        throw new Error(`invalid config: \`${key}\` must be a map, found ${typeName(value)}`);
      }
      for (const [name, item] of Object.entries(value)) {
        if (!check(item)) {
          throw new Error(
            `invalid config: \`${key}.${name}\` must be ${what}, found ${JSON.stringify(item)}`,
          );
        }
      }
      return value;
    };
    const fieldList = (key) => {
      const value = config[key] ?? [];
      if (!Array.isArray(value) || !value.every((f) => typeof f === "string")) {
        throw new Error(`invalid config: \`${key}\` must be a list of field names`);
      }
      return value;
    };
    const textOrNull = (key) => {
      const value = config[key] ?? null;
      if (value !== null && typeof value !== "string") {
        throw new Error(`invalid config: \`${key}\` must be a string, found ${typeName(value)}`);
      }
      return value;
    };
    const sorted = (map) => Object.entries(map).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));

    this.fromTopic = sorted(mapping("from_topic", isLevel, "a topic level (0, 1, ...)"));
    this.add = Object.entries(mapping("add", () => true, "any value"));
    this.rename = sorted(mapping("rename", (v) => typeof v === "string", "a field name"));
    const units = Object.keys(UNITS).join(" | ");
    this.convert = sorted(mapping("convert", (v) => has(UNITS, v), `one of ${units}`));
    this.round = config.round ?? null;
    if (this.round !== null && !isLevel(this.round)) {
      throw new Error("invalid config: `round` must be a number of decimals (0 to 12)");
    }
    if (this.round !== null && this.round > 12) {
      throw new Error("invalid config: `round` must be at most 12 decimals");
    }
    this.drop = fieldList("drop");
    this.require = fieldList("require");
    this.keyField = textOrNull("key_field");
    this.kafkaTopic = textOrNull("kafka_topic");
    const targets = new Set();
    for (const [, target] of this.rename) {
      if (targets.has(target)) {
        throw new Error(`invalid config: \`rename\` maps two fields to \`${target}\``);
      }
      targets.add(target);
    }
    if (this.keyField !== null && this.drop.includes(this.keyField)) {
      throw new Error(
        `invalid config: \`key_field\` \`${this.keyField}\` is also in \`drop\`, which runs first`,
      );
    }
    if (this.kafkaTopic === "") {
      throw new Error("invalid config: `kafka_topic` is empty");
    }
    this.steps = KEYS.filter((k) => config[k] != null).join(", ") || "none (pass-through)";
  }
}

function parseObject(payload) {
  let text;
  try {
    text = utf8.decode(payload);
  } catch (e) {
    throw new MapError(`payload is not UTF-8: ${e.message}`);
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new MapError(`payload is not JSON: ${e.message}`);
  }
  if (!isMap(value)) {
    throw new MapError(`payload is JSON ${typeName(value)}, expected a JSON object`);
  }
  return value;
}

function convert(field, value, unit, decimals) {
  if (typeof value !== "number") {
    throw new MapError(`field \`${field}\` is ${typeName(value)}, expected a number to convert`);
  }
  let y = UNITS[unit](value);
  if (decimals !== null && Number.isFinite(y)) y = roundHalfAway(y, decimals);
  if (!Number.isFinite(y)) {
    throw new MapError(`field \`${field}\`: ${value} does not convert to a finite number`);
  }
  return new Float(y);
}

/** Maps one message: an array of 0 or 1 messages, or throws MapError. */
function mapMessage(s, msg) {
  // A Map keeps insertion order for every key; plain objects put "1", "2"... first.
  const fields = new Map(Object.entries(parseObject(msg.payload)));
  if (s.require.some((f) => !fields.has(f))) return [];
  const levels = msg.topic.split("/");
  // 1. from_topic
  for (const [field, level] of s.fromTopic) {
    if (level >= levels.length) {
      throw new MapError(`topic \`${msg.topic}\` has no level ${level} for field \`${field}\``);
    }
    fields.set(field, levels[level]);
  }
  // 2. add
  for (const [field, value] of s.add) fields.set(field, value);
  // 3. rename: take every old field out first, so renames do not see each other.
  const moved = [];
  for (const [old, target] of s.rename) {
    if (fields.has(old)) {
      moved.push([target, fields.get(old)]);
      fields.delete(old);
    }
  }
  for (const [target, value] of moved) fields.set(target, value);
  // 4. convert
  for (const [field, unit] of s.convert) {
    if (fields.has(field)) fields.set(field, convert(field, fields.get(field), unit, s.round));
  }
  // 5. drop
  for (const field of s.drop) fields.delete(field);
  // 6. key_field, kafka_topic
  if (s.keyField !== null) {
    const value = fields.get(s.keyField);
    if (value === undefined || value === null) {
      throw new MapError(`key_field \`${s.keyField}\` is missing or null`);
    }
    msg.key = encoder.encode(typeof value === "string" ? value : toJson(value));
  }
  if (s.kafkaTopic !== null) msg.kafkaTopic = s.kafkaTopic;
  msg.payload = encoder.encode(objectJson(fields));
  return [msg];
}

/** JSON text of an ordered Map of fields, in its insertion order. */
function objectJson(fields) {
  const parts = [];
  for (const [name, value] of fields) parts.push(`${JSON.stringify(name)}:${toJson(value)}`);
  return `{${parts.join(",")}}`;
}

let settings = null;

/** The exported `transformer` interface. */
export const transformer = {
  init(config) {
    try {
      settings = new Settings(config);
    } catch (e) {
      throw e.message; // the thrown value is the `err` payload (a string)
    }
    log("info", `js json-map ready; steps: ${settings.steps}`);
  },

  process(batch) {
    return batch.map((msg) => {
      if (settings === null) return { tag: "err", val: { message: "init was not called" } };
      try {
        return { tag: "ok", val: mapMessage(settings, msg) };
      } catch (e) {
        const message =
          e instanceof MapError ? e.message : `js json-map failed: ${e?.name ?? "error"}: ${e?.message ?? e}`;
        return { tag: "err", val: { message } };
      }
    });
  },
};
