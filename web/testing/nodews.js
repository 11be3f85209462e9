// A minimal WebSocket client for Node 20 (which has no global WebSocket),
// with the browser API push.js uses: onopen, onmessage({data}),
// onclose({code, reason}), onerror, send(text), close(code). Enough for
// tests against a real edge: text frames, close, ping/pong; no extensions,
// no fragmentation (the edge sends neither).
import net from 'node:net';
import crypto from 'node:crypto';

export class NodeWebSocket {
  constructor(url) {
    const u = new URL(url);
    this.url = url;
    this.readyState = 0;
    this.buf = Buffer.alloc(0);
    this.upgraded = false;
    this.closeSent = false;
    this.finished = false;
    const key = crypto.randomBytes(16).toString('base64');
    this.sock = net.connect(Number(u.port), u.hostname, () => {
      this.sock.write(`GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    this.sock.on('data', (d) => this.#data(d));
    this.sock.on('error', () => {});
    this.sock.on('close', () => this.#finish(1006, ''));
  }

  #data(d) {
    this.buf = Buffer.concat([this.buf, d]);
    if (!this.upgraded) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buf.subarray(0, end).toString();
      this.buf = this.buf.subarray(end + 4);
      if (!/^HTTP\/1\.1 101 /.test(head)) {
        // A browser sees no status: an error, then a close 1006.
        this.onerror && this.onerror({});
        this.sock.destroy();
        return;
      }
      this.upgraded = true;
      this.readyState = 1;
      this.onopen && this.onopen();
    }
    for (;;) {
      if (this.buf.length < 2) return;
      const op = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        off = 10;
      }
      if (this.buf.length < off + len) return;
      const p = this.buf.subarray(off, off + len);
      this.buf = this.buf.subarray(off + len);
      if (op === 1) this.onmessage && this.onmessage({ data: p.toString() });
      else if (op === 9) this.#frame(10, p);
      else if (op === 8) {
        const code = p.length >= 2 ? p.readUInt16BE(0) : 1005;
        if (!this.closeSent) this.#frame(8, p.subarray(0, 2));
        this.#finish(code, p.subarray(2).toString());
        this.sock.end();
      }
    }
  }

  #frame(op, payload) {
    const mask = crypto.randomBytes(4);
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | op, 0x80 | n]) : Buffer.from([0x80 | op, 0x80 | 126, n >> 8, n & 0xff]);
    const body = Buffer.from(payload);
    for (let i = 0; i < body.length; i++) body[i] ^= mask[i % 4];
    this.sock.write(Buffer.concat([head, mask, body]));
  }

  #finish(code, reason) {
    if (this.finished) return;
    this.finished = true;
    this.readyState = 3;
    this.closeEvent = { code, reason }; // for tests: what the server closed with
    this.onclose && this.onclose({ code, reason });
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.#frame(1, Buffer.from(String(text)));
  }

  close(code = 1000) {
    if (this.readyState === 1 && !this.closeSent) {
      this.closeSent = true;
      const p = Buffer.alloc(2);
      p.writeUInt16BE(code);
      this.#frame(8, p);
    }
    this.readyState = 2;
    setTimeout(() => this.sock.destroy(), 100).unref();
  }
}
