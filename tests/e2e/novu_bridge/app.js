// An Express app serving @novu/framework workflows at /api/novu, for norm's e2e tests
// (tests/e2e/test_novu_framework.py). Payload and control schemas are plain JSON Schema,
// but for one workflow's payload, written with zod (checked by zod itself, and discovered
// as zod-to-json-schema's translation).
//
//   PORT=4000 NOVU_SECRET_KEY=sk_test node app.js
"use strict";

const express = require("express");
const { Client, workflow } = require("@novu/framework");
const { serve } = require("@novu/framework/express");
const { z } = require("zod");

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

// (d) A custom step whose result later steps read, in their resolvers and skip conditions;
// an in-app message with an avatar, a redirect and actions, skipped when the payload says
// so; a delay from the payload; an email without `from` whose controls have defaults; and
// a custom step skipped by a previous step's result, whose result a step after it reads.
const rich = workflow(
  "rich-flow",
  async ({ step, payload }) => {
    const score = await step.custom(
      "score",
      async () => ({ points: payload.points * 2, tier: payload.points > 5 ? "gold" : "tin" }),
      {
        outputSchema: {
          type: "object",
          properties: { points: { type: "number" }, tier: { type: "string" } },
          required: ["points", "tier"],
          additionalProperties: false,
        },
      },
    );
    await step.inApp(
      "card",
      async () => ({
        subject: `Niveau ${score.tier} ✨`,
        body: `${score.points} Punkte für ${payload.name}`,
        avatar: "https://example.com/avatar.png",
        redirect: { url: "/rewards", target: "_self" },
        primaryAction: { label: "Einlösen", redirect: { url: "https://example.com/redeem" } },
        secondaryAction: { label: "Später" },
        data: { tier: score.tier },
      }),
      { skip: () => payload.quiet },
    );
    await step.delay("pause", async () => ({ amount: payload.waitSeconds, unit: "seconds" }), {
      skip: () => payload.waitSeconds === 0,
    });
    const bonus = await step.custom("bonus", async () => ({ code: `B-${score.points}` }), {
      outputSchema: {
        type: "object",
        // Not required: a skipped step's result is `{}`, which a required key would fail
        // (ExecutionStateResultInvalidError on the next call, with Novu's server too).
        properties: { code: { type: "string" } },
        additionalProperties: false,
      },
      skip: () => score.tier !== "gold",
    });
    await step.email(
      "summary",
      async (controls) => ({
        subject: `${controls.prefix} ${score.tier}`,
        body: `<p>${controls.greeting} ${payload.name}: ${score.points}, bonus ${bonus.code || "none"}</p>`,
      }),
      {
        controlSchema: {
          type: "object",
          properties: {
            prefix: { type: "string", default: "[Punkte]" },
            greeting: { type: "string", default: "Hallo" },
          },
          additionalProperties: false,
        },
        skip: (controls) => score.points < 4 || controls.prefix === "off",
      },
    );
  },
  {
    payloadSchema: {
      type: "object",
      properties: {
        name: { type: "string", default: "Gast" },
        points: { type: "number", default: 1 },
        quiet: { type: "boolean", default: false },
        waitSeconds: { type: "number", default: 0 },
      },
      additionalProperties: false,
    },
  },
);

// (e) Step order from the payload: both steps are discovered (an empty payload takes the
// else), and a `first: "mail"` payload runs them the other way round.
const swap = workflow(
  "swap-flow",
  async ({ step, payload }) => {
    const mail = () => step.email("swap-mail", async () => ({ subject: "Swap ✉️", body: "mail" }));
    const note = () => step.inApp("swap-note", async () => ({ body: `note after ${payload.first}` }));
    if (payload.first === "mail") {
      await mail();
      await note();
    } else {
      await note();
      await mail();
    }
  },
  {
    payloadSchema: {
      type: "object",
      properties: { first: { type: "string", default: "note" } },
      additionalProperties: false,
    },
  },
);

// (f) Changed between two deployments: NOVU_APP_VARIANT=v2 adds a step after the first.
const changing = workflow("changing-flow", async ({ step }) => {
  await step.inApp("first", async () => ({ body: "first" }));
  if (process.env.NOVU_APP_VARIANT === "v2") {
    await step.inApp("added", async () => ({ body: "added in v2 🆕" }));
  }
  await step.inApp("last", async () => ({ body: "last" }));
});

// (g) A payload schema written with zod, as Novu's examples write them. The SDK checks a
// payload with zod; its discover shows zod-to-json-schema's translation, which loses a
// regex's flags, checks `.url()` as a JSON Schema `uri` (ASCII only; zod parses it as a
// WHATWG URL) and `.multipleOf(0.01)` by float division (zod's is float-safe).
const receipt = workflow(
  "zod-receipt-flow",
  async ({ step, payload }) => {
    await step.inApp("receipt", async () => ({
      body: `${payload.sku} × ${payload.qty}: ${payload.total} € (${payload.link})`,
    }));
  },
  {
    payloadSchema: z.object({
      sku: z.string().regex(/^[a-z]+-\d+$/i),
      total: z.number().multipleOf(0.01),
      link: z.string().url(),
      qty: z.number().int().default(1),
    }),
  },
);

// (h) A path that changes between two runs of the code, as after a deployment between
// them or with a branch on the time: each notification's second run (norm's execute of
// the step its probe named) does not reach the email. Discover reaches it (its run of
// the code is the first for an absent key).
const runs = new Map();
const wavering = workflow(
  "wavering-flow",
  async ({ step, payload }) => {
    const run = (runs.get(payload.key) || 0) + 1;
    runs.set(payload.key, run);
    if (run !== 2) {
      await step.email("wavering-mail", async () => ({ subject: "Encore là ✉️", body: `run ${run}` }));
    }
  },
  {
    payloadSchema: {
      type: "object",
      properties: { key: { type: "string" } },
      required: ["key"],
      additionalProperties: false,
    },
  },
);

// (i) A zod payload whose translation says more than zod checks: the members of a
// discriminated union lose the keys their option does not declare (each branch of the
// translation is `additionalProperties: false`), a `.trim()` comes before the length is
// counted, and a `.url()` in a union is a WHATWG URL to zod.
const parcel = workflow(
  "zod-union-flow",
  async ({ step, payload }) => {
    await step.inApp("parcel-note", async () => ({
      body: `${JSON.stringify(payload.channel)} [${payload.code}] ${payload.link}`,
    }));
  },
  {
    payloadSchema: z.object({
      channel: z.discriminatedUnion("kind", [
        z.object({ kind: z.literal("mail"), to: z.string() }),
        z.object({ kind: z.literal("sms"), phone: z.string() }),
      ]),
      code: z.string().trim().length(3),
      link: z.string().url().or(z.literal("")),
    }),
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
    workflows: [welcome, order, broken, rich, swap, changing, receipt, wavering, parcel],
  }),
);
app.listen(port, "127.0.0.1", () => console.log(`novu bridge listening on 127.0.0.1:${port}`));
