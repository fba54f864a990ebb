#!/usr/bin/env python3
"""Mosquitto 2.0.x: a durable $share subscriber loses QoS 1 messages across a clean broker restart.

One broker (persistence true), one durable shared subscriber and one durable non-shared
subscriber (MQTT 5, clean_start=False, session expiry 86400 s, QoS 1, manual ack), and
publishers at QoS 1 with a sequence number as payload. The broker is stopped with SIGTERM
mid-stream and started again; the publishers reconnect at once, the subscribers SUB_DELAY s
later. For each subscriber the script prints how many PUBACKed sequence numbers never arrived,
split by when they were published.
usage: python3 repro.py [--runs N] [--sub-delay S] [--subs-first] [--resub always|if_no_session]
                        [--port P] [--broker /path/to/mosquitto]
"""
import argparse, os, shutil, signal, subprocess, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=18901)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--rate", type=int, default=2000)          # total messages/s (best effort)
ap.add_argument("--pubs", type=int, default=4)
ap.add_argument("--sub-delay", type=float, default=4.0)    # s after restart before subs return
ap.add_argument("--subs-first", action="store_true")       # subs reconnect before publishers
ap.add_argument("--resub", default="always", choices=["always", "if_no_session"])
ap.add_argument("--broker", default="/usr/sbin/mosquitto")
a = ap.parse_args()
BASE = f"/tmp/mqloss/p{a.port}"
SUBS = {"shared": "$share/iot-gateway/sensors/#", "normal": "sensors/#"}

def start_broker():
    with open(f"{BASE}/mosquitto.conf", "w") as f:
        f.write(f"listener {a.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {BASE}/data/\nautosave_interval 5\n"
                f"max_queued_messages 0\nmax_inflight_messages 1000\n"
                f"log_dest file {BASE}/broker.log\nlog_type all\n")
    p = subprocess.Popen([a.broker, "-c", f"{BASE}/mosquitto.conf"])
    time.sleep(0.3)
    return p

def stop(c):
    c.disconnect(); c.loop_stop()

class Sub:
    def __init__(self, name):
        self.name, self.got = name, set()
    def connect(self):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"durable-{self.name}",
                        protocol=mqtt.MQTTv5, manual_ack=True)
        ready = threading.Event()
        def on_connect(cl, ud, flags, rc, props):
            if a.resub == "always" or not flags.session_present:
                cl.subscribe(SUBS[self.name], qos=1)
            else:
                ready.set()                          # trust the persistent session
        def on_message(cl, ud, m):
            self.got.add(int(m.payload))
            cl.ack(m.mid, m.qos)
        c.on_connect, c.on_message = on_connect, on_message
        c.on_subscribe = lambda *x: ready.set()
        props = Properties(PacketTypes.CONNECT); props.SessionExpiryInterval = 86400
        c.connect("127.0.0.1", a.port, 30, clean_start=False, properties=props)
        c.loop_start(); ready.wait(5)
        self.c = c

def new_pub(i):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{i}", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000); c.max_queued_messages_set(0)
    c.connect("127.0.0.1", a.port, 30); c.loop_start()
    return c

def run(n):
    shutil.rmtree(BASE, ignore_errors=True); os.makedirs(f"{BASE}/data")
    os.chmod(BASE, 0o777); os.chmod(f"{BASE}/data", 0o777)  # broker may drop to user mosquitto
    broker = start_broker()
    subs = [Sub("shared"), Sub("normal")]
    for s in subs: s.connect()
    pubs = [new_pub(i) for i in range(a.pubs)]
    sent, seq = [], 0                                # (seq, phase, MQTTMessageInfo)

    def publish_for(secs, phase):
        nonlocal seq
        end = time.time() + secs
        while time.time() < end:
            for k, p in enumerate(pubs):
                seq += 1
                sent.append((seq, phase, p.publish(f"sensors/dev{k}/temp", str(seq), qos=1)))
            time.sleep(len(pubs) / a.rate)

    publish_for(3, "before-restart")
    broker.send_signal(signal.SIGTERM); broker.wait()  # clean shutdown, db saved
    for c in pubs + [s.c for s in subs]: stop(c)
    broker = start_broker()
    if a.subs_first:
        for s in subs: s.connect()
    pubs = [new_pub(i) for i in range(a.pubs)]     # publishers are back immediately
    if not a.subs_first:
        publish_for(a.sub_delay, "restart..sub-reconnect")
        for s in subs: s.connect()                 # subscribers come back later
    publish_for(3, "after-sub-reconnect")
    time.sleep(3)                                  # drain
    for c in pubs + [s.c for s in subs]: stop(c)
    broker.send_signal(signal.SIGTERM); broker.wait()

    acked = [(q, ph) for q, ph, info in sent if info.is_published()]   # PUBACK received
    print(f"run {n}: acked={len(acked)}")
    for s in subs:
        lost = [(q, ph) for q, ph in acked if q not in s.got]
        by_phase = {}
        for _, ph in lost: by_phase[ph] = by_phase.get(ph, 0) + 1
        print(f"   {s.name:6} {SUBS[s.name]:30} lost={len(lost):6} "
              f"({100 * len(lost) / max(1, len(acked)):4.1f}%) {by_phase}")

for n in range(1, a.runs + 1):
    run(n)
