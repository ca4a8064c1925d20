#!/usr/bin/env python3
"""Split a profile.sh recording by process and by what the CPU did, in CPU
seconds per GB moved. The last lines give the floor: the lab's CPU per GB
minus everything the engines spend in userspace and in going to sleep and
waking up, i.e. what the kernel must do for any forwarder that reads a TUN
and writes a UDP socket (and back)."""
import collections, json, os, re, subprocess, sys

d = sys.argv[1]
res = json.load(open(os.path.join(d, 'result.json')))
gb = res['bytes'] / 1e9
engine = set(open(os.path.join(d, 'engine.pids')).read().split())
server = set(open(os.path.join(d, 'server.pids')).read().split())
out = subprocess.run(['perf', 'script', '-i', os.path.join(d, 'perf.data'), '-F', 'comm,pid,tid,ip,sym'],
                     capture_output=True, text=True, check=True).stdout

samples, cur = [], None
for line in out.split('\n'):
    if not line.strip():
        if cur: samples.append(cur)
        cur = None
    elif line[0] not in ' \t':
        m = re.match(r'\s*(.+?)\s+(\d+)/(\d+)\s*$', line)
        cur = [m.group(1), m.group(2), []] if m else None
    elif cur is not None:
        f = line.split(None, 1)
        cur[2].append((int(f[0], 16) if re.match(r'^[0-9a-f]+$', f[0]) else 0, f[1] if len(f) > 1 else '?'))
if cur: samples.append(cur)
client = {pid for comm, pid, _ in samples if comm == 'perf-exec'}

def group(comm, pid):
    if pid == '0': return 'idle'
    if pid in engine: return 'engines'
    if pid in server: return 'receiving app'
    if pid in client: return 'sending app'
    if comm.startswith(('ksoftirqd', 'kworker', 'rcu')): return 'kernel threads'
    return 'other: ' + comm

# The first match in the stack names the kernel path a sample belongs to.
PATHS = [('tun_do_read', 'TUN read'), ('tun_get_user', 'TUN write'), ('sendmmsg', 'UDP send (sendmmsg)'),
         ('recvmmsg', 'UDP receive (recvmmsg)'), ('tcp_sendmsg', 'app TCP send'), ('tcp_recvmsg', 'app TCP receive')]
SLEEP = [('do_epoll_wait', 'sleep/wake: epoll'), ('futex_w', 'sleep/wake: futex'), ('do_sys_poll', 'sleep/wake: poll'),
         ('nanosleep', 'sleep/wake: nanosleep'), ('__schedule', 'sleep/wake: scheduler'), ('try_to_wake_up', 'sleep/wake: scheduler')]
COPY = ('copy_user', 'copy_to_iter', 'copy_from_iter', 'rep_movs', 'memcpy', 'memmove', 'copy_page')

def category(stack):
    ip, leaf = stack[0] if stack else (0, '?')
    names = ' '.join(s for _, s in stack)
    low = leaf.lower()
    if any(k in low for k in ('idle', 'halt', 'cpuidle', 'mwait')): return 'idle'
    if ip < 0xffff800000000000:  # userspace
        if leaf.startswith('runtime.memmove') or 'memmove' in low: return 'user: copies'
        if 'checksum' in low: return 'user: checksums'
        if leaf.startswith(('runtime.', 'internal/runtime')): return 'user: Go runtime'
        return 'user: code'
    kind = 'kernel copy: ' if any(k in low for k in COPY) else 'kernel: '
    for k, v in PATHS:
        if k in names: return kind + v
    if 'net_rx_action' in names: return kind + 'softirq receive'
    for k, v in SLEEP:
        if k in names: return v
    return kind + 'other'

tot, by = collections.Counter(), collections.defaultdict(collections.Counter)
for comm, pid, stack in samples:
    g, c = group(comm, pid), category(stack)
    if g == 'idle' or c == 'idle': g = c = 'idle'
    tot[g] += 1
    by[g][c] += 1
hz = 1999.0
per = lambda n: n / hz / gb
busy = sum(v for k, v in tot.items() if k != 'idle')
print(f"{d}: {res['bits_per_second']/1e9:.2f} Gbit/s, {gb:.1f} GB; CPU busy {per(busy):.3f} s/GB, idle {per(tot['idle']):.3f} s/GB")
for g, v in tot.most_common():
    if g == 'idle' or per(v) < 0.005: continue
    print(f'  {g:24s} {per(v):6.3f} s/GB')
    for c, w in sorted(by[g].items(), key=lambda kv: -kv[1]):
        if per(w) >= 0.005: print(f'      {c:34s} {per(w):6.3f}')
if engine:
    e = by['engines']
    user = sum(w for c, w in e.items() if c.startswith('user:'))
    sleep = sum(w for c, w in e.items() if c.startswith('sleep/wake'))
    print(f'  engines in userspace {per(user):.3f} s/GB, sleeping and waking {per(sleep):.3f} s/GB')
    print(f'  floor (lab minus both): {per(busy - user - sleep):.3f} s/GB')
