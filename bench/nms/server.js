// node-media-server 2.x as a benchmark peer: RTMP and HTTP-FLV on loopback ports.
//   node server.js RTMP_PORT HTTP_PORT MEDIAROOT
// NMS 2.x has no host option and listens on every interface; the benchmark must stay on
// loopback, so every listen() with a bare port is pinned to 127.0.0.1 here.
'use strict';
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number') {
    return listen.call(this, port, '127.0.0.1', ...rest);
  }
  return listen.call(this, port, ...rest);
};
const NodeMediaServer = require('node-media-server');
const [rtmpPort, httpPort, mediaroot] = process.argv.slice(2);
const nms = new NodeMediaServer({
  logType: 1, // errors only: no per-connection logging cost
  rtmp: { port: Number(rtmpPort), chunk_size: 60000, gop_cache: true, ping: 30, ping_timeout: 60 },
  http: { port: Number(httpPort), allow_origin: '*', mediaroot },
});
nms.run();
process.on('SIGTERM', () => { nms.stop(); process.exit(0); });
