'use strict';
// Load generator for receive_path.py and ingest.py: a Goldmane-compatible `goldmane.Flows/Stream`
// over mTLS that replays pre-serialised FlowResults, so that the Python client, not this server,
// is the limit of the measurement.
//
//   node loadgen.js --data FILE --cert server.crt --key server.key --ca ca.crt \
//       [--port 0] [--total N] [--bucket-seconds S] [--rate R] [--hold] [--framed]
//
// FILE holds FlowResult messages, each preceded by its length as 4 bytes big-endian. Every
// Stream call gets N results (default: the file once), cycling the file as often as needed,
// then a clean end. The bound port is printed on stdout as one line once the server listens.
//
// --bucket-seconds S: FILE is one bucket, and pass k over it is sent with every flow's
//   start_time and end_time moved k*S seconds later. A long stream of increasing buckets then
//   needs one bucket on disk, not millions of messages. The times are rewritten in place in a
//   copy of the messages: both are 5-byte varints for any epoch second from 1978 to 2038.
// --rate R: send at most R results per second (default: as fast as the client takes them).
// --hold: after the last result keep the stream open, as Goldmane does between two pushes, so
//   that a client is never told to reconnect; the stream ends when the client cancels it.
// --framed: serve gRPC straight from node's HTTP/2 (same TLS, same wire format), writing
//   pre-framed results many at a time, as a busy gRPC-Go server coalesces its writes; grpc-js
//   spends ~20 us of CPU per message, about what the Python client does, so it can be the
//   limit. Without it: @grpc/grpc-js, one call.write() per result.

const fs = require('node:fs');
const http2 = require('node:http2');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');

const STREAM_PATH = '/goldmane.Flows/Stream';
// Results per write in --framed mode: ~64 KiB of ~540-byte results.
const FRAMED_BATCH = 120;

function usage(message) {
  process.stderr.write(
    `loadgen: ${message}\nusage: node loadgen.js --data FILE --cert CERT --key KEY ` +
      '--ca CA [--port PORT] [--total N] [--bucket-seconds S] [--rate R] [--hold] [--framed]\n',
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

// Times patched in place must keep their encoded size: 2^28 <= t < 2^31 is 5 bytes.
const VARINT5_MIN = 2 ** 28;
const VARINT5_MAX = 2 ** 31 - 1;

function readVarint(buffer, offset) {
  let value = 0;
  let scale = 1;
  for (let at = offset; at < buffer.length; at += 1) {
    const byte = buffer[at];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return { value, end: at + 1 };
    scale *= 128;
  }
  throw new Error(`truncated varint at byte ${offset}`);
}

function writeVarint5(buffer, offset, value) {
  for (let i = 0; i < 4; i += 1) {
    buffer[offset + i] = (value % 128) | 0x80;
    value = Math.floor(value / 128);
  }
  buffer[offset + 4] = value;
}

function skipField(buffer, offset, wireType) {
  if (wireType === 0) return readVarint(buffer, offset).end;
  if (wireType === 1) return offset + 8;
  if (wireType === 5) return offset + 4;
  if (wireType === 2) {
    const { value, end } = readVarint(buffer, offset);
    return end + value;
  }
  throw new Error(`unsupported wire type ${wireType} at byte ${offset}`);
}

// Where FlowResult.flow (2).start_time (2) and .end_time (3) are, and their values.
function locateTimes(message) {
  let offset = 0;
  while (offset < message.length) {
    const tag = readVarint(message, offset);
    offset = tag.end;
    if (tag.value !== ((2 << 3) | 2)) {
      offset = skipField(message, offset, tag.value & 7);
      continue;
    }
    const length = readVarint(message, offset);
    const times = {};
    let at = length.end;
    while (at < length.end + length.value) {
      const field = readVarint(message, at);
      at = field.end;
      const number = Math.floor(field.value / 8);
      if ((number === 2 || number === 3) && (field.value & 7) === 0) {
        const time = readVarint(message, at);
        if (time.end - at !== 5 || time.value < VARINT5_MIN || time.value > VARINT5_MAX) {
          throw new Error(`flow time ${time.value} is not a 5-byte varint`);
        }
        times[number === 2 ? 'start' : 'end'] = { offset: at, value: time.value };
        at = time.end;
      } else {
        at = skipField(message, at, field.value & 7);
      }
    }
    if (!times.start || !times.end) throw new Error('a flow without start_time or end_time');
    return times;
  }
  throw new Error('a FlowResult without a flow');
}

// One stream's sending loop, shared by both servers: `write(index, count, pass)` sends `count`
// results from `index` of pass `pass` and returns false when the client is behind; `onDrain`
// waits for it; `end` finishes the stream. Returns a function that stops the loop.
function pumpStream({ total, perPass, batch, rate, hold, write, onDrain, end }) {
  let sent = 0;
  let next = 0;
  let pass = 0;
  let finished = false;
  let started = 0;
  const pump = () => {
    let allowed = total;
    if (rate) {
      const now = performance.now();
      if (!started) started = now;
      allowed = Math.min(total, Math.floor(((now - started) * rate) / 1000) + 1);
    }
    while (!finished && sent < allowed) {
      const count = Math.min(batch, allowed - sent, perPass - next);
      const ok = write(next, count, pass);
      sent += count;
      next += count;
      if (next === perPass) {
        next = 0;
        pass += 1;
      }
      if (!ok) {
        // Flow control: the client is behind; buffering more would only measure our memory.
        onDrain(pump);
        return;
      }
    }
    if (finished) return;
    if (sent < total) {
      setTimeout(pump, 1); // rate-limited: the next millisecond's share
    } else if (!hold) {
      finished = true;
      end();
    }
  };
  pump();
  return () => {
    finished = true;
  };
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
        'bucket-seconds': { type: 'string' },
        rate: { type: 'string', default: '0' },
        hold: { type: 'boolean', default: false },
        framed: { type: 'boolean', default: false },
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
  const bucketSeconds =
    values['bucket-seconds'] === undefined ? 0 : parseCount('bucket-seconds', values['bucket-seconds'], 1);
  const rate = parseCount('rate', values.rate, 0);
  let times = null;
  if (bucketSeconds) {
    try {
      times = messages.map(locateTimes);
    } catch (error) {
      usage(`${values.data}: ${error.message}`);
    }
    const passes = Math.ceil(total / messages.length);
    const latest = Math.max(...times.map((t) => t.end.value)) + (passes - 1) * bucketSeconds;
    if (latest > VARINT5_MAX) usage(`--total ${total} moves flow times past 2^31`);
  }
  const options = { total, perPass: messages.length, rate, hold: values.hold };
  const files = {
    ca: fs.readFileSync(values.ca),
    key: fs.readFileSync(values.key),
    cert: fs.readFileSync(values.cert),
  };
  const stop = values.framed
    ? serveFramed(messages, times, bucketSeconds, options, files, port)
    : serveGrpcJs(messages, times, bucketSeconds, options, files, port);

  const shutdown = () => {
    stop();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  // The parent holds our stdin open: when it goes away, however it died, so do we.
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

function listening(port) {
  return (error, boundPort) => {
    if (error) {
      process.stderr.write(`loadgen: cannot listen on 127.0.0.1:${port}: ${error.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`${boundPort}\n`);
  };
}

// @grpc/grpc-js, one call.write() per result.
function serveGrpcJs(messages, times, bucketSeconds, options, files, port) {
  // The message to send as result `index` of pass `pass` over the file.
  const messageFor = (index, pass) => {
    if (!times || pass === 0) return messages[index];
    // A copy: grpc-js may still hold the previous pass's buffer when this one is written.
    const message = Buffer.from(messages[index]);
    const { start, end } = times[index];
    writeVarint5(message, start.offset, start.value + pass * bucketSeconds);
    writeVarint5(message, end.offset, end.value + pass * bucketSeconds);
    return message;
  };

  const credentials = grpc.ServerCredentials.createSsl(
    files.ca,
    [{ private_key: files.key, cert_chain: files.cert }],
    true, // Goldmane requires a client certificate signed by its CA; so does this server.
  );

  // Defined by hand with identity (de)serialisers: the messages are already on the wire format,
  // and the request is not needed to replay them.
  const flowsService = {
    Stream: {
      path: STREAM_PATH,
      requestStream: false,
      responseStream: true,
      requestSerialize: (b) => b,
      requestDeserialize: (b) => b,
      responseSerialize: (b) => b,
      responseDeserialize: (b) => b,
    },
  };

  function stream(call) {
    const stop = pumpStream({
      ...options,
      batch: 1,
      write: (index, _count, pass) => call.write(messageFor(index, pass)),
      onDrain: (pump) => call.once('drain', pump),
      end: () => call.end(),
    });
    call.on('cancelled', stop);
    // A client that hangs up mid-stream is normal here (Ctrl-C, a timeout): not a crash.
    call.on('error', stop);
  }

  const server = new grpc.Server();
  server.addService(flowsService, { Stream: stream });
  server.bindAsync(`127.0.0.1:${port}`, credentials, listening(port));
  return () => server.forceShutdown();
}

// gRPC on node's own HTTP/2: each result framed once (a 0 byte for "not compressed", then its
// length as 4 bytes big-endian), and written many at a time.
function serveFramed(messages, times, bucketSeconds, options, files, port) {
  const starts = [];
  let size = 0;
  for (const message of messages) {
    starts.push(size);
    size += 5 + message.length;
  }
  starts.push(size);
  const framed = Buffer.alloc(size);
  messages.forEach((message, index) => {
    framed[starts[index]] = 0;
    framed.writeUInt32BE(message.length, starts[index] + 1);
    message.copy(framed, starts[index] + 5);
  });
  // The file as pass `pass` sends it; a new buffer per pass, since writes may still hold the last.
  let current = { pass: 0, buffer: framed };
  const passBuffer = (pass) => {
    if (current.pass !== pass) {
      const buffer = Buffer.from(framed);
      times.forEach(({ start, end }, index) => {
        writeVarint5(buffer, starts[index] + 5 + start.offset, start.value + pass * bucketSeconds);
        writeVarint5(buffer, starts[index] + 5 + end.offset, end.value + pass * bucketSeconds);
      });
      current = { pass, buffer };
    }
    return current.buffer;
  };

  const server = http2.createSecureServer({
    ca: files.ca,
    key: files.key,
    cert: files.cert,
    requestCert: true, // Goldmane requires a client certificate signed by its CA; so does this.
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {}); // a client that hangs up mid-stream is normal here
    if (headers[':path'] !== STREAM_PATH) {
      // Trailers-only response: status 12, UNIMPLEMENTED.
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.resume(); // the request is not needed to replay the file
    const stop = pumpStream({
      ...options,
      batch: FRAMED_BATCH,
      write: (index, count, pass) => {
        const buffer = times ? passBuffer(pass) : framed;
        return stream.write(buffer.subarray(starts[index], starts[index + count]));
      },
      onDrain: (pump) => stream.once('drain', pump),
      end: () => stream.end(),
    });
    stream.on('close', stop);
  });
  server.on('sessionError', () => {});
  server.listen(port, '127.0.0.1', () => listening(port)(null, server.address().port));
  return () => server.close();
}

main();
