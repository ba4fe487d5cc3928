// A real Yjs editor client for podshare's interop tests: yjs + y-websocket + ws.
//
// Usage: node client.cjs <node_modules parent dir> <server url> <room>
//
// Commands arrive on stdin, one JSON object per line, {"id": n, "op": ..., ...}; each
// gets one reply on stdout, {"id": n, ...}; events have no id ({"event": "synced"}).
// Texts are compared through their length and SHA-256, so a 10 MB paste never crosses
// the pipe.
'use strict'

const path = require('path')
const crypto = require('crypto')
const readline = require('readline')
const { createRequire } = require('module')

const [modulesDir, url, room] = process.argv.slice(2)
const load = createRequire(path.join(modulesDir, 'package.json'))
const Y = load('yjs')
const { WebsocketProvider } = load('y-websocket')
const WebSocket = load('ws')

const doc = new Y.Doc()
const text = doc.getText('t')
const provider = new WebsocketProvider(url, room, doc, {
  WebSocketPolyfill: WebSocket,
  disableBc: true,
  maxBackoffTime: 200
})

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function digest () {
  const value = text.toString()
  return {
    length: value.length,
    sha: crypto.createHash('sha256').update(value).digest('hex'),
    head: value.slice(0, 40)
  }
}

provider.on('sync', (synced) => {
  if (synced) emit({ event: 'synced', ...digest() })
})
provider.on('status', (event) => emit({ event: 'status', status: event.status }))

// Waiters for a text condition, re-checked on every change.
const waiters = []
text.observe(() => {
  for (let i = waiters.length - 1; i >= 0; i--) {
    if (waiters[i].test()) {
      waiters[i].done()
      waiters.splice(i, 1)
    }
  }
})

function states () {
  const out = []
  provider.awareness.getStates().forEach((state, client) => {
    if (client !== doc.clientID) out.push([client, state])
  })
  return out
}

const ops = {
  client_id: () => ({ client: doc.clientID }),
  digest: () => digest(),
  synced: () => ({ synced: provider.synced }),
  insert: (cmd) => {
    text.insert(Math.min(cmd.index ?? text.length, text.length), cmd.text)
    return digest()
  },
  paste: (cmd) => {
    // A paste of cmd.size characters (one Yjs update), made here to spare the pipe.
    const chunk = 'lorem ipsum dolor sit amet '.repeat(64)
    let value = chunk.repeat(Math.ceil(cmd.size / chunk.length)).slice(0, cmd.size)
    value = (cmd.prefix ?? '') + value.slice((cmd.prefix ?? '').length)
    text.insert(text.length, value)
    return digest()
  },
  // Type cmd.chars one character per transaction, every cmd.interval ms, at the end.
  type: (cmd) => new Promise((resolve) => {
    let i = 0
    const step = () => {
      if (i >= cmd.chars.length) return resolve(digest())
      text.insert(text.length, cmd.chars[i++])
      setTimeout(step, cmd.interval ?? 0)
    }
    step()
  }),
  wait_contains: (cmd) => new Promise((resolve) => {
    const test = () => cmd.all.every((needle) => text.toString().includes(needle))
    if (test()) return resolve(digest())
    waiters.push({ test, done: () => resolve(digest()) })
  }),
  wait_length: (cmd) => new Promise((resolve) => {
    const test = () => text.length >= cmd.min
    if (test()) return resolve(digest())
    waiters.push({ test, done: () => resolve(digest()) })
  }),
  set_awareness: (cmd) => {
    provider.awareness.setLocalState(cmd.state)
    return { client: doc.clientID }
  },
  states: () => ({ states: states() }),
  // How many characters of the text belong to cmd.set (what one client typed).
  count: (cmd) => {
    const set = new Set(cmd.set)
    return { count: [...text.toString()].filter((c) => set.has(c)).length }
  },
  close: () => {
    provider.destroy()
    return {}
  }
}

const input = readline.createInterface({ input: process.stdin })
input.on('line', async (line) => {
  const cmd = JSON.parse(line)
  try {
    const result = await ops[cmd.op](cmd)
    emit({ id: cmd.id, ...result })
  } catch (err) {
    emit({ id: cmd.id, error: String(err && err.stack ? err.stack : err) })
  }
})
input.on('close', () => {
  provider.destroy()
  process.exit(0)
})
