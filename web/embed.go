// Package web holds the browser side of the push cluster: the JavaScript
// client (push.js, its SharedWorker push-worker.js and TypeScript
// declarations push.d.ts) and the demo page under demo/. They are plain
// files served as they are (no build step); FS embeds them for the demo
// server (pkg/demo).
package web

import "embed"

// FS holds push.js, push-worker.js, push.d.ts and demo/ (index.html,
// demo.css, demo.js), at those paths.
//
//go:embed push.js push-worker.js push.d.ts demo
var FS embed.FS
