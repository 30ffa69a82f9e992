// An Express app serving @novu/framework workflows at /api/novu, for norm's e2e tests
// (tests/e2e/test_novu_framework.py). Payload and control schemas are plain JSON Schema,
// so neither zod nor zod-to-json-schema is needed.
//
//   PORT=4000 NOVU_SECRET_KEY=sk_test node app.js
"use strict";

const express = require("express");
const { Client, workflow } = require("@novu/framework");
const { serve } = require("@novu/framework/express");

const secretKey = process.env.NOVU_SECRET_KEY;
const port = Number(process.env.PORT || 4000);
if (!secretKey) throw new Error("NOVU_SECRET_KEY is required");

// (a) in_app -> delay -> email (with a control) -> sms, skipped unless asked for and unread.
const welcome = workflow(
  "welcome-flow",
  async ({ step, payload, subscriber }) => {
    const inbox = await step.inApp("inbox", async () => ({
      subject: `Bienvenue ${payload.userName} 🎉`,
      body: `Commande n° ${payload.order.id}: ${payload.order.items.join(", ")}`,
      data: { order: payload.order },
    }));
    await step.delay("wait", async () => ({ type: "regular", amount: payload.delaySeconds, unit: "seconds" }));
    await step.email(
      "mail",
      async (controls) => ({
        subject: `Grüße, ${payload.userName} — ${payload.order.items[0]}`,
        body: `${controls.greeting} ${subscriber.firstName || ""}. Seen in-app: ${inbox.seen}. ${controls.footer}`,
      }),
      {
        controlSchema: {
          type: "object",
          properties: {
            greeting: { type: "string", default: "Hallo" },
            footer: { type: "string", default: "— l'équipe ✉️" },
          },
          additionalProperties: false,
        },
      },
    );
    await step.sms("text", async () => ({ body: `${payload.userName}: ${payload.order.id} 📦` }), {
      skip: () => !payload.sendSms || inbox.read,
    });
  },
  {
    name: "Welcome (Novu framework)",
    payloadSchema: {
      type: "object",
      properties: {
        userName: { type: "string", default: "there" },
        delaySeconds: { type: "number", default: 1 },
        sendSms: { type: "boolean", default: false },
        order: {
          type: "object",
          properties: {
            id: { type: "string", default: "0" },
            items: { type: "array", items: { type: "string" }, default: ["—"] },
            meta: { type: "object", additionalProperties: true },
          },
          default: {},
        },
      },
      additionalProperties: false,
    },
  },
);

// (b) A branch on the payload. Novu's SDK answers 404 StepNotFoundError for a step its
// discovery did not reach, and discovery runs the code once with an empty payload (no
// schema defaults applied), so the branch is written to be taken when `status` is absent.
const order = workflow(
  "order-flow",
  async ({ step, payload }) => {
    if (payload.status !== "pending") {
      await step.email("shipped-email", async () => ({
        subject: `Expédié: ${payload.item} 🚚`,
        body: `Your ${payload.item} is on its way.`,
      }));
    }
    await step.inApp("status-note", async () => ({ body: `${payload.status}: ${payload.item} ⏳` }));
  },
  {
    payloadSchema: {
      type: "object",
      properties: {
        status: { type: "string", enum: ["pending", "shipped"] },
        item: { type: "string", default: "item" },
      },
      additionalProperties: false,
    },
  },
);

// (c) A step whose resolver throws.
const broken = workflow(
  "broken-flow",
  async ({ step, payload }) => {
    await step.inApp("ok-note", async () => ({ body: `Avant l'erreur: ${payload.reason}` }));
    await step.email("boom", async () => {
      throw new Error(`boom from boom: ${payload.reason}`);
    });
  },
  {
    payloadSchema: {
      type: "object",
      properties: { reason: { type: "string", default: "ünknown" } },
      additionalProperties: false,
    },
  },
);

const app = express();
app.use(express.json());
app.use(
  "/api/novu",
  serve({
    // Strict even outside production: the framework only defaults to it when NODE_ENV is
    // neither unset nor development.
    client: new Client({ secretKey, strictAuthentication: true }),
    workflows: [welcome, order, broken],
  }),
);
app.listen(port, "127.0.0.1", () => console.log(`novu bridge listening on 127.0.0.1:${port}`));
