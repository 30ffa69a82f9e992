// Runs a plan of @novu/api calls against a server and prints what each returned.
// stdin: {"serverURL", "secretKey", "calls": [{"call": "subscribers.create", "args": [...]}]}
// stdout: one entry per call, {"result": <the client's parsed result>} or {"error": {...}}.
// Every call is made, in order, whatever the previous one did.
const { Novu } = require("@novu/api");

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const plan = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  // The client retries 408, 409, 429 and 5xx for up to an hour by default: a bug must fail fast.
  const novu = new Novu({
    serverURL: plan.serverURL,
    secretKey: plan.secretKey,
    retryConfig: { strategy: "none" },
    timeoutMs: 15000,
  });
  const outcomes = [];
  for (const { call, args } of plan.calls) {
    const names = call.split(".");
    const method = names.pop();
    const owner = names.reduce((object, name) => object[name], novu);
    try {
      const response = await owner[method](...args);
      // A call answered with no body (a 204) resolves to undefined.
      outcomes.push({ result: response === undefined ? null : (response.result ?? null) });
    } catch (error) {
      outcomes.push({
        error: {
          name: error.constructor.name,
          message: error.message,
          statusCode: error.statusCode ?? null,
          body: error.body ?? null,
          // The typed error's parsed body (ErrorDto, ValidationErrorDto, ...).
          data: error.data$ ?? null,
          // A response zod refused: what it was and why.
          rawValue: error.rawValue ?? null,
          pretty: typeof error.pretty === "function" ? error.pretty() : null,
        },
      });
    }
  }
  process.stdout.write(JSON.stringify(outcomes));
}

main().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
