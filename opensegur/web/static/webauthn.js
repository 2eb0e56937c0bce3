// Security keys (FIDO2 / WebAuthn): enrolment on « Mes clés de sécurité » and the key as second login factor.
// A file of the platform's origin because the Content-Security-Policy runs no inline script.
"use strict";

(function () {
  function toBuffer(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var binary = atob(b64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function show(status, text) {
    status.textContent = text;
    status.hidden = false;
  }

  async function post(url, body, csrf) {
    var headers = { "Content-Type": "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    var response = await fetch(url, {
      method: "POST", headers: headers, body: JSON.stringify(body), credentials: "same-origin",
    });
    var data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (!response.ok) throw new Error(data.detail || "Refusé par le serveur (" + response.status + ")");
    return data;
  }

  // The browser's own errors are in its language and say little: the person needs to know what to do.
  function explain(error) {
    if (error instanceof DOMException) {
      if (error.name === "InvalidStateError") return "Cette clé est déjà enregistrée sur votre compte.";
      return "La clé n'a pas répondu (annulé, délai dépassé ou clé inconnue de ce site) : recommencez.";
    }
    return error.message;
  }

  function supported(status) {
    if (window.PublicKeyCredential && navigator.credentials) return true;
    show(status, "Ce navigateur ne permet pas d'utiliser une clé de sécurité sur cette adresse (HTTPS requis).");
    return false;
  }

  function creationOptions(options) {
    options.challenge = toBuffer(options.challenge);
    options.user.id = toBuffer(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    return options;
  }

  function requestOptions(options) {
    options.challenge = toBuffer(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    return options;
  }

  function attestation(credential) {
    var r = credential.response;
    return {
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      response: {
        clientDataJSON: toText(r.clientDataJSON), attestationObject: toText(r.attestationObject),
        transports: r.getTransports ? r.getTransports() : [],
      },
      clientExtensionResults: credential.getClientExtensionResults(),
    };
  }

  function assertion(credential) {
    var r = credential.response;
    return {
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      response: {
        clientDataJSON: toText(r.clientDataJSON), authenticatorData: toText(r.authenticatorData),
        signature: toText(r.signature), userHandle: r.userHandle ? toText(r.userHandle) : null,
      },
      clientExtensionResults: credential.getClientExtensionResults(),
    };
  }

  var enrol = document.getElementById("ajouter-cle");
  if (enrol) {
    enrol.addEventListener("click", async function () {
      var status = document.getElementById("cle-etat");
      var csrf = document.getElementById("ajout-cle").dataset.csrf;
      if (!supported(status)) return;
      enrol.disabled = true;
      show(status, "Touchez votre clé de sécurité…");
      try {
        var options = await post("/api/moi/cles/options", {}, csrf);
        var credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
        var label = document.getElementById("nom-cle").value;
        var done = await post("/api/moi/cles", { credential: attestation(credential), label: label }, csrf);
        show(status, done.detail);
        window.location.assign(done.redirect);
      } catch (error) {
        show(status, explain(error));
        enrol.disabled = false;
      }
    });
  }

  var login = document.getElementById("utiliser-cle");
  if (login) {
    login.addEventListener("click", async function () {
      var status = document.getElementById("cle-etat");
      if (!supported(status)) return;
      login.disabled = true;
      show(status, "Touchez votre clé de sécurité…");
      try {
        var options = await post("/connexion/cle/options", {});
        var credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
        var retour = document.querySelector("input[name=retour]");
        var done = await post("/connexion/cle/verifier", {
          credential: assertion(credential), retour: retour ? retour.value : "",
        });
        window.location.assign(done.redirect);
      } catch (error) {
        show(status, explain(error));
        login.disabled = false;
      }
    });
  }
})();
