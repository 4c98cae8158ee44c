// A peer for the pong workload: Node.js answering inline PING with +PONG, batching the replies of one read
// (like bench/raw_pong.py). Run: node bench/node_pong.js PORT
const net = require("net");
const port = Number(process.argv[2]);
net.createServer((sock) => {
  let rest = "";
  sock.setNoDelay(true);
  sock.on("data", (data) => {
    const text = rest + data.toString("latin1");
    const lines = text.split("\n");
    rest = lines.pop();
    if (lines.length) sock.write("+PONG\r\n".repeat(lines.length));
  });
  sock.on("error", () => {});
}).listen(port, "127.0.0.1", 1024);
