// The hospital's single sign-on for the tests: panva's oidc-provider (OpenID Certified), which nobody on this
// project wrote, with one confidential client (the platform) and a minimal login page of our own: login, password
// and an optional one-time code. With the right code the login declares amr ["pwd", "otp"] and acr
// "urn:chu:mfa"; without it, amr ["pwd"] and acr "urn:chu:pwd".
//
// Configuration from the environment: OP_CLIENT_ID, OP_CLIENT_SECRET, OP_REDIRECT_URI, OP_USERS (JSON:
// {login: {password, otp, name}}). Listens on a free loopback port and prints {"issuer": …} on its first line.
import http from 'node:http';
import Provider from 'oidc-provider';

const users = JSON.parse(process.env.OP_USERS);

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString()));
}

function loginPage(uid, error) {
  return `<!doctype html><html lang="fr"><meta charset="utf-8"><title>SSO CHU</title>
<h1>Authentification unique du CHU</h1>${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Identifiant <input name="login" required></label>
<label>Mot de passe <input name="password" type="password" required></label>
<label>Code à usage unique <input name="otp"></label>
<button type="submit">Se connecter</button></form></html>`;
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: process.env.OP_CLIENT_ID,
      client_secret: process.env.OP_CLIENT_SECRET,
      redirect_uris: [process.env.OP_REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    acrValues: ['urn:chu:pwd', 'urn:chu:mfa'],
    // oidc-provider puts acr and amr in the ID token only when asked for them; a hospital's SSO (Keycloak, ADFS)
    // sends them with every login, so here they come with the openid scope.
    claims: { openid: ['sub', 'acr', 'amr'], profile: ['preferred_username', 'name'] },
    cookies: { keys: [process.env.OP_CLIENT_SECRET] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, sub) {
      if (!users[sub]) return undefined;
      return { accountId: sub, claims: async () => ({ sub, preferred_username: sub, name: users[sub].name }) };
    },
  });
  provider.proxy = false;

  provider.use(async (ctx, next) => {
    const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (!match) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (ctx.method === 'GET' && details.prompt.name === 'login') {
      ctx.type = 'html';
      ctx.body = loginPage(details.uid, '');
      return undefined;
    }
    let result;
    if (ctx.method === 'POST' && match[2]) {
      const form = await readForm(ctx.req);
      const user = users[form.login];
      if (!user || user.password !== form.password) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginPage(details.uid, 'Identifiant ou mot de passe incorrect.');
        return undefined;
      }
      const otp = Boolean(form.otp) && form.otp === user.otp;
      result = {
        login: {
          accountId: form.login,
          acr: otp ? 'urn:chu:mfa' : 'urn:chu:pwd',
          amr: otp ? ['pwd', 'otp'] : ['pwd'],
        },
      };
    } else if (details.prompt.name === 'consent') {
      // The platform is the hospital's own application: consent is given for it, as an SSO does.
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const missing = details.prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      result = { consent: { grantId: await grant.save() } };
    } else {
      ctx.status = 400;
      ctx.body = 'interaction inattendue';
      return undefined;
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
    ctx.status = 303;
    ctx.redirect(returnTo);
    return undefined;
  });

  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
