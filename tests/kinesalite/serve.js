// kinesalite on 127.0.0.1 only, for the Kinesis-semantics tests (DESIGN.md §5).
//
// Usage: node serve.js PORT [DATA_DIR]
//   PORT 0 picks a free port; DATA_DIR makes the streams persistent (LevelDB), for crash tests.
// Prints "KINESALITE_PORT=<port>" once listening. SIGTERM/SIGINT close the database and exit 0.
//
// kinesalite's own CLI binds every interface, hence this wrapper around its JS API.
'use strict'

const kinesalite = require('kinesalite')

const port = Number(process.argv[2] || 0)
const dataDir = process.argv[3]
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`serve.js: bad port ${JSON.stringify(process.argv[2])}`)
  process.exit(2)
}

const options = { createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100 }
if (dataDir) options.path = dataDir

const server = kinesalite(options)

server.on('error', (err) => {
  console.error(`serve.js: ${err.message}`)
  process.exit(1)
})

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`KINESALITE_PORT=${server.address().port}\n`)
})

let stopping = false
function stop() {
  if (stopping) return
  stopping = true
  // Never hang on a client's keep-alive connection; exit anyway after a grace period.
  setTimeout(() => process.exit(0), 3000).unref()
  server.close(() => process.exit(0))
  if (server.closeAllConnections) server.closeAllConnections()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
