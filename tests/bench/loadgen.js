'use strict';
// Load generator for receive_path.py: a Goldmane-compatible `goldmane.Flows/Stream` over mTLS
// that replays pre-serialised FlowResults, so that the Python client, not this server, is the
// limit of the measurement.
//
//   node loadgen.js --data FILE --cert server.crt --key server.key --ca ca.crt \
//       [--port 0] [--total N]
//
// FILE holds FlowResult messages, each preceded by its length as 4 bytes big-endian. Every
// Stream call gets N results (default: the file once), cycling the file as often as needed,
// then a clean end. The bound port is printed on stdout as one line once the server listens.

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');

function usage(message) {
  process.stderr.write(
    `loadgen: ${message}\nusage: node loadgen.js --data FILE --cert CERT --key KEY ` +
      '--ca CA [--port PORT] [--total N]\n',
  );
  process.exit(2);
}

function readMessages(path) {
  const data = fs.readFileSync(path);
  const messages = [];
  let offset = 0;
  while (offset < data.length) {
    if (offset + 4 > data.length) usage(`${path}: truncated length prefix at byte ${offset}`);
    const length = data.readUInt32BE(offset);
    offset += 4;
    if (offset + length > data.length) usage(`${path}: truncated message at byte ${offset}`);
    // Views into the one file buffer: no copy, and grpc-js frames a Buffer as it is.
    messages.push(data.subarray(offset, offset + length));
    offset += length;
  }
  if (messages.length === 0) usage(`${path}: no messages`);
  return messages;
}

function parseCount(name, text, minimum) {
  if (!/^\d+$/.test(text) || Number(text) < minimum) usage(`--${name} must be an integer >= ${minimum}`);
  return Number(text);
}

function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        data: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        ca: { type: 'string' },
        port: { type: 'string', default: '0' },
        total: { type: 'string' },
      },
    }));
  } catch (error) {
    usage(error.message);
  }
  for (const name of ['data', 'cert', 'key', 'ca']) {
    if (!values[name]) usage(`--${name} is required`);
  }
  const messages = readMessages(values.data);
  const port = parseCount('port', values.port, 0);
  const total = values.total === undefined ? messages.length : parseCount('total', values.total, 0);

  const credentials = grpc.ServerCredentials.createSsl(
    fs.readFileSync(values.ca),
    [{ private_key: fs.readFileSync(values.key), cert_chain: fs.readFileSync(values.cert) }],
    true, // Goldmane requires a client certificate signed by its CA; so does this server.
  );

  // Defined by hand with identity (de)serialisers: the messages are already on the wire format,
  // and the request is not needed to replay them.
  const flowsService = {
    Stream: {
      path: '/goldmane.Flows/Stream',
      requestStream: false,
      responseStream: true,
      requestSerialize: (b) => b,
      requestDeserialize: (b) => b,
      responseSerialize: (b) => b,
      responseDeserialize: (b) => b,
    },
  };

  function stream(call) {
    let sent = 0;
    let next = 0;
    let finished = false;
    const stop = () => {
      finished = true;
    };
    call.on('cancelled', stop);
    // A client that hangs up mid-stream is normal here (Ctrl-C, a timeout): not a crash.
    call.on('error', stop);
    const pump = () => {
      while (!finished && sent < total) {
        const ok = call.write(messages[next]);
        sent += 1;
        next = next + 1 === messages.length ? 0 : next + 1;
        if (!ok) {
          // Flow control: the client is behind; buffering more would only measure our memory.
          call.once('drain', pump);
          return;
        }
      }
      if (!finished) {
        finished = true;
        call.end();
      }
    };
    pump();
  }

  const server = new grpc.Server();
  server.addService(flowsService, { Stream: stream });
  server.bindAsync(`127.0.0.1:${port}`, credentials, (error, boundPort) => {
    if (error) {
      process.stderr.write(`loadgen: cannot listen on 127.0.0.1:${port}: ${error.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`${boundPort}\n`);
  });

  const shutdown = () => {
    server.forceShutdown();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  // The parent holds our stdin open: when it goes away, however it died, so do we.
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

main();
