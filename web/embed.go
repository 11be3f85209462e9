// Package web holds the browser side of the push cluster: the JavaScript
// client (push.js, its SharedWorker push-worker.js and TypeScript
// declarations push.d.ts), the demo page under demo/ and the cluster
// console under console/. They are plain files served as they are (no
// build step); FS embeds them for the demo server (pkg/demo) and the
// router's admin port (pkg/console).
package web

import "embed"

// FS holds push.js, push-worker.js, push.d.ts and demo/ (index.html,
// demo.css, demo.js) and console/ (index.html, console.css, console.js), at
// those paths.
//
//go:embed push.js push-worker.js push.d.ts demo console
var FS embed.FS
