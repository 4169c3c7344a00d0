"use strict";
// The seed's full user story, end to end with the real phoenix.js client
// over WebSockets (the story itself is in story.js).
const { serverTest } = require("./helpers");
const { story } = require("./story");

serverTest("story: offline message, unread in lobby, history, read, two-way chat with presence, leave, notification", { timeout: 60000 }, async (ctx) => {
  await story((user, opts) => ctx.connect(user, opts));
});
