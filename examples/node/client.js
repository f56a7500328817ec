#!/usr/bin/env node
// Forest Bus from Node.js: the gRPC API with @grpc/grpc-js, the .proto files
// of ../../proto loaded at run time by @grpc/proto-loader (no generated code).
//
//   node client.js ADDRESS CLUSTER_ID [TOPIC]
//   node client.js 127.0.0.1:3000 local          # against `make run`
//
// It runs five checks against one node and exits 0 only if all of them pass:
//   1. GetClusterDetails: the node belongs to CLUSTER_ID.
//   2. SendMessages: 3 messages with wait_for_commit; prints their IDs.
//   3. GetMessages from the first ID: the bytes come back unchanged.
//   4. Long poll: GetMessages with wait=true at the next ID stays open until
//      one more message is sent, then returns exactly that message.
//   5. Errors: GetMessages on a topic that does not exist fails with
//      NOT_FOUND and the google.rpc.ErrorInfo reason TOPIC_NOT_FOUND, read
//      from the grpc-status-details-bin trailer.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const CALL_TIMEOUT_MS = 10_000; // deadline of every unary call but the long poll
const LONG_POLL_TIMEOUT_MS = 25_000; // below the node's 30 s cap on a wait
const WATCHDOG_MS = 90_000; // the whole program

// int64 fields (message IDs) come back as decimal strings (longs: String), so
// no ID loses precision above 2^53; bytes fields are Buffers.
const packageDefinition = protoLoader.loadSync(
  ['forestbus/v1/forestbus.proto', 'forestbus/v1/admin.proto', 'forestbus/v1/errors.proto'],
  {
    includeDirs: [PROTO_DIR],
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const forestbusV1 = grpc.loadPackageDefinition(packageDefinition).forestbus.v1;

// google.rpc.Status as it travels in the grpc-status-details-bin trailer,
// and the one detail Forest Bus puts in it, google.rpc.ErrorInfo. Field
// numbers as in googleapis' google/rpc/status.proto and error_details.proto.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { typeUrl: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const StatusType = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfoType = rpcTypes.lookupType('google.rpc.ErrorInfo');
const ERROR_INFO_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

// grpc.status maps names to numbers; this maps them back.
const codeNames = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// errorInfo returns the ErrorInfo detail of a failed call, or null.
function errorInfo(err) {
  const values = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  for (const raw of values) {
    const status = StatusType.decode(Buffer.isBuffer(raw) ? raw : Buffer.from(raw));
    for (const any of status.details) {
      if (any.typeUrl === ERROR_INFO_URL) {
        return ErrorInfoType.toObject(ErrorInfoType.decode(any.value), { defaults: true });
      }
    }
  }
  return null;
}

function describeError(err) {
  if (err == null || err.code === undefined) return String(err);
  const info = errorInfo(err);
  const reason = info ? ` ${info.reason}` : '';
  return `${codeNames[err.code] || err.code}${reason}: ${err.details}`;
}

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
}

async function main(argv) {
  if (argv.length < 4 || argv.length > 5) {
    console.error('usage: node client.js ADDRESS CLUSTER_ID [TOPIC]   e.g. node client.js 127.0.0.1:3000 local');
    return 2;
  }
  const [, , address, clusterID, topic = 'default'] = argv;
  const client = new forestbusV1.ForestBusService(address, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('forestbus-cluster-id', clusterID);

  // call runs one unary RPC with the cluster ID metadata and a deadline.
  // The returned promise has .call, the grpc-js call object.
  const call = (method, request, timeoutMs = CALL_TIMEOUT_MS) => {
    let c;
    const p = new Promise((resolve, reject) => {
      c = client[method](request, md, { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(err) : resolve(res),
      );
    });
    p.call = c;
    return p;
  };

  // A tag of this run, so that its messages can be told from others'.
  const tag = crypto.randomBytes(6).toString('hex');
  const payload = (i) =>
    Buffer.concat([Buffer.from(`node:${tag}:${i}:h\u00e9llo`, 'utf8'), Buffer.from([0x00, 0xff, 0x80, 0x0a, i])]);
  console.log(`run tag: ${tag}`);

  try {
    // 1. Which cluster is this?
    const cluster = await call('getClusterDetails', {});
    console.log(`cluster: ${cluster.clusterId} (answered by node ${cluster.nodeName}, ${cluster.nodes.length} node(s))`);
    check(cluster.clusterId === clusterID, `cluster ID is ${JSON.stringify(cluster.clusterId)}, want ${JSON.stringify(clusterID)}`);

    // 2. Send 3 messages, committed.
    const sent = [payload(1), payload(2), payload(3)];
    const res = await call('sendMessages', { topic, messages: sent, waitForCommit: true });
    check(typeof res.firstId === 'string', `first_id is a ${typeof res.firstId}, want a string (longs: String)`);
    const firstID = BigInt(res.firstId);
    check(firstID >= 1n && res.count === sent.length, `SendMessages answered first_id=${res.firstId} count=${res.count}`);
    const ids = sent.map((_, i) => firstID + BigInt(i));
    console.log(`sent: ids ${ids.join(' ')}`);

    // 3. Read them back from the first ID. An answer may hold fewer messages
    // than asked for, so read until there are 3. A follower learns of a
    // commit a moment after the leader (up to the leader's commit notice
    // delay, 20 ms by default): wait for the messages, as a reader at the
    // tail would, rather than expect them at once.
    const got = [];
    let next = firstID;
    while (got.length < sent.length) {
      const r = await call('getMessages', { topic, id: next.toString(), quantity: sent.length - got.length, wait: true }, LONG_POLL_TIMEOUT_MS);
      check(r.messages.length > 0, `GetMessages at id ${next} returned no message (next_id=${r.nextId})`);
      check(BigInt(r.nextId) === next + BigInt(r.messages.length), `GetMessages at id ${next}: next_id=${r.nextId} with ${r.messages.length} messages`);
      got.push(...r.messages);
      next = BigInt(r.nextId);
    }
    for (let i = 0; i < sent.length; i++) {
      check(Buffer.compare(got[i], sent[i]) === 0, `message ${ids[i]}: got ${got[i].toString('hex')}, sent ${sent[i].toString('hex')}`);
    }
    console.log(`read: ids ${ids.join(' ')} match the bytes sent`);

    // 4. Long poll at the next ID, then send one more message.
    const pollID = firstID + BigInt(sent.length);
    const poll = call('getMessages', { topic, id: pollID.toString(), quantity: 10, wait: true }, LONG_POLL_TIMEOUT_MS);
    let pollDone = false;
    poll.then(() => { pollDone = true; }, () => { pollDone = true; });
    await new Promise((resolve) => setTimeout(resolve, 300));
    if (pollDone) {
      const early = await poll.then((r) => `${r.messages.length} message(s), next_id=${r.nextId}`, describeError);
      throw new CheckFailed(`the long poll at id ${pollID} answered before anything was sent: ${early}`);
    }
    console.log(`long poll: waiting at id ${pollID}`);
    const last = payload(4);
    const t0 = Date.now();
    const res4 = await call('sendMessages', { topic, messages: [last], waitForCommit: true });
    const lastID = BigInt(res4.firstId);
    console.log(`sent: id ${lastID}`);
    const polled = await poll;
    check(lastID === pollID, `the 4th message got id ${lastID}, want ${pollID} (another producer on topic ${topic}?)`);
    check(polled.messages.length >= 1, `the long poll at id ${pollID} ended with no message (next_id=${polled.nextId})`);
    check(Buffer.compare(polled.messages[0], last) === 0, `the long poll returned ${polled.messages[0].toString('hex')}, sent ${last.toString('hex')}`);
    console.log(`long poll: returned id ${pollID} ${Date.now() - t0} ms after the send`);

    // 5. A clean error for a topic that does not exist.
    const missing = `no-such-topic-${tag}`;
    try {
      await call('getMessages', { topic: missing, id: '1', quantity: 1 });
      throw new CheckFailed(`GetMessages on ${missing} succeeded`);
    } catch (err) {
      if (err instanceof CheckFailed) throw err;
      const info = errorInfo(err);
      console.log(`error: ${codeNames[err.code] || err.code} ${info ? info.reason : '(no ErrorInfo)'} domain=${info ? info.domain : ''}: ${err.details}`);
      check(err.code === grpc.status.NOT_FOUND, `unknown topic: code ${codeNames[err.code] || err.code}, want NOT_FOUND`);
      check(info !== null, 'unknown topic: no google.rpc.ErrorInfo in grpc-status-details-bin');
      check(info.reason === 'TOPIC_NOT_FOUND' && info.domain === 'forestbus', `unknown topic: ErrorInfo ${JSON.stringify(info)}, want forestbus/TOPIC_NOT_FOUND`);
    }
  } catch (err) {
    if (err instanceof CheckFailed) {
      console.error(`FAILED: ${err.message}`);
    } else if (err && err.code !== undefined) {
      console.error(`FAILED: unexpected gRPC error: ${describeError(err)}`);
    } else {
      console.error(`FAILED: ${err && err.stack ? err.stack : err}`);
    }
    return 1;
  } finally {
    client.close();
  }
  console.log('all checks passed');
  return 0;
}

const watchdog = setTimeout(() => {
  console.error(`FAILED: not done after ${WATCHDOG_MS / 1000} s`);
  process.exit(1);
}, WATCHDOG_MS);
watchdog.unref();

main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(`FAILED: ${err && err.stack ? err.stack : err}`); process.exitCode = 1; },
);
