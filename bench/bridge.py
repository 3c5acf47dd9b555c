#!/usr/bin/env python3
"""The MQTT -> Kafka bridge a user would write in Python: paho-mqtt in,
confluent-kafka out, the same JSON mapping as the json-map example transform
in sluice-bench's cases e and f:

    from_topic: { device_id: 1 }             # device id from the topic
    rename:     { temperature_f: temperature_c }
    convert:    { temperature_c: f_to_c }    # rounded to 2 decimals
    drop:       [firmware]
    key_field:  device_id                    # Kafka key

What it guarantees: nothing. paho acknowledges each QoS 1 message as soon
as on_message returns, before Kafka has it (acks on receipt); a crash or a
Kafka outage loses what was in flight, and a payload that does not map is
logged and dropped.

    python3 bench/bridge.py --mqtt-host 127.0.0.1 --mqtt-port 1883 \
        --client-id bridge --filter 'sensors/+/telemetry' --qos 1 \
        --brokers 127.0.0.1:9092 --topic telemetry

Prints `ready` once subscribed and connected to Kafka; stops on SIGTERM or
SIGINT (flushing the producer first).
"""

import argparse
import json
import signal
import sys

import paho.mqtt.client as mqtt
from confluent_kafka import Producer


def f_to_c(x):
    return (x - 32.0) * 5.0 / 9.0


def map_payload(topic, payload):
    """The json-map mapping; returns (key, value bytes)."""
    fields = json.loads(payload)
    if not isinstance(fields, dict):
        raise ValueError("payload is not a JSON object")
    levels = topic.split("/")
    fields["device_id"] = levels[1]
    if "temperature_f" in fields:
        fields["temperature_c"] = fields.pop("temperature_f")
    if "temperature_c" in fields:
        fields["temperature_c"] = round(f_to_c(float(fields["temperature_c"])), 2)
    fields.pop("firmware", None)
    key = fields["device_id"]
    return key.encode(), json.dumps(fields, separators=(",", ":")).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--client-id", default="python-bridge")
    parser.add_argument("--filter", default="sensors/+/telemetry")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()

    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            "broker.address.family": "v4",
            "acks": "1",
            "enable.idempotence": False,
            "compression.type": "lz4",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1000000,
        }
    )
    producer.list_topics(args.topic, timeout=10)

    stats = {"mapped": 0, "failed": 0}

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"bridge: connect failed: {reason_code}", file=sys.stderr)
            return
        client.subscribe(args.filter, qos=args.qos)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print("ready", flush=True)

    def on_message(client, userdata, msg):
        try:
            key, value = map_payload(msg.topic, msg.payload)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            stats["failed"] += 1
            if stats["failed"] <= 5:
                print(f"bridge: cannot map a message on {msg.topic}: {err}", file=sys.stderr)
            return
        while True:
            try:
                producer.produce(args.topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        stats["mapped"] += 1

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message

    def stop(signum, frame):
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    client.connect(args.mqtt_host, args.mqtt_port, keepalive=30, clean_start=True)
    client.loop_forever()
    left = producer.flush(30)
    print(
        f"bridge: {stats['mapped']} mapped, {stats['failed']} failed, {left} not flushed",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
