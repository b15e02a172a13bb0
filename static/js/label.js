/* The labelling page: keyboard shortcuts, submit by fetch, and one comparison kept prefetched.

   The server renders each comparison as an HTML fragment (markdown already sanitised there) and
   leases it before sending it, so the page keeps one lease ahead: after a submit the prefetched
   comparison replaces the current one at once, the submit finishes in the background, and the
   next prefetch starts. A submit that fails on the network is retried (the server makes a
   retried submit harmless); a refused one is reported in the status line, naming the comparison.

   No inline script anywhere: everything the page needs comes from data- attributes. */
(function () {
  "use strict";

  const root = document.getElementById("workspace");
  if (!root) return;

  const urls = { next: root.dataset.nextUrl, submit: root.dataset.submitUrl, skip: root.dataset.skipUrl };
  const csrfToken = root.dataset.csrfToken;
  const stage = document.getElementById("stage");
  const form = document.getElementById("answer");
  const fields = document.getElementById("answer-fields");
  const strengthGroup = document.getElementById("strength-group");
  const rationale = document.getElementById("rationale");
  const statusLine = document.getElementById("status");
  const alertLine = document.getElementById("alert");
  const todayCount = document.getElementById("today-count");
  const helpDialog = document.getElementById("help-dialog");
  const skipDialog = document.getElementById("skip-dialog");
  const skipForm = document.getElementById("skip-form");
  const skipDetails = document.getElementById("skip-details");
  const skipError = document.getElementById("skip-error");
  const guidelines = document.querySelector(".guidelines");

  const RETRIES = 3;
  let current = null; // {id, shownLeft, shownAt}
  let prefetched = null; // {assignment, html} from the next endpoint
  let prefetching = null; // the promise of the prefetch in flight
  let advancing = false;
  const inFlight = new Set(); // comparison ids whose submit or skip has not been answered

  // Talking to the server -------------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function post(url, body) {
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken },
          body: JSON.stringify(body),
        });
      } catch (networkError) {
        if (attempt < RETRIES) {
          await sleep(400 * 2 ** attempt);
          continue;
        }
        return { ok: false, message: "The server cannot be reached. Check your connection." };
      }
      if (response.redirected) {
        return { ok: false, message: "Your session has ended. Reload the page and log in again." };
      }
      if (response.status >= 500 && attempt < RETRIES) {
        await sleep(400 * 2 ** attempt);
        continue;
      }
      let data = null;
      try {
        data = await response.json();
      } catch (notJson) {
        data = null;
      }
      if (response.ok && data) return { ok: true, data };
      if (data && data.message) return { ok: false, code: data.code, message: data.message };
      if (response.status === 403) {
        return { ok: false, message: "The server refused the request (403). Reload the page; if it persists, log in again." };
      }
      return { ok: false, message: "The server answered with an error (" + response.status + "). Try again in a moment." };
    }
  }

  function say(message) {
    alertLine.textContent = "";
    statusLine.textContent = message;
  }

  function warn(message) {
    statusLine.textContent = "";
    alertLine.textContent = message;
  }

  // What the comparison on screen still needs. The status line is left as it is: it may tell of
  // the comparison before (the second Enter of a double press lands on the next one, nothing
  // chosen yet, and must not wipe out its "Saved").
  function hint(message) {
    alertLine.textContent = message;
  }

  // What is on screen ---------------------------------------------------------------------------

  function readCurrent() {
    const item = stage.querySelector("[data-comparison-id]");
    if (!item) return null;
    return { id: Number(item.dataset.comparisonId), shownLeft: item.dataset.shownLeft, shownAt: performance.now() };
  }

  function resetForm() {
    form.reset();
    strengthGroup.disabled = true;
    fields.disabled = current === null;
    fields.hidden = current === null;
  }

  function show(next) {
    stage.innerHTML = next.html;
    current = readCurrent();
    const item = stage.querySelector(".comparison");
    if (item) item.classList.add("arrived");
    resetForm();
    const checkAgain = document.getElementById("check-again");
    if (checkAgain) checkAgain.addEventListener("click", checkAgainClicked);
    focusItem();
    window.scrollTo({ top: 0 });
  }

  // Focus goes to the comparison on screen, so a screen reader announces it and Tab starts from
  // it; with nothing left, to the "Check again" button.
  function focusItem() {
    const target = stage.querySelector(".comparison") || document.getElementById("check-again") || stage;
    target.focus({ preventScroll: true });
  }

  function excluded() {
    const ids = Array.from(inFlight);
    if (current) ids.push(current.id);
    return ids.slice(-10);
  }

  function prefetch(shown) {
    if (prefetching) return prefetching;
    if (prefetched) return Promise.resolve(prefetched);
    prefetching = post(urls.next, { exclude: excluded(), shown: shown || null }).then((result) => {
      prefetching = null;
      if (result.ok) {
        prefetched = result.data;
      } else {
        warn("The next comparison could not be loaded: " + result.message);
      }
      return prefetched;
    });
    return prefetching;
  }

  async function advance() {
    if (advancing) return;
    advancing = true;
    try {
      if (!prefetched) {
        fields.disabled = true;
        say("Loading the next comparison…");
        await prefetch();
      }
      if (!prefetched) return;
      const next = prefetched;
      prefetched = null;
      show(next);
      if (current) prefetch(current.id);
    } finally {
      advancing = false;
    }
  }

  async function checkAgainClicked() {
    prefetched = null;
    await advance();
    if (!current) say("Still nothing new for you. Try again later.");
  }

  // Answering --------------------------------------------------------------------------------

  function selected(name) {
    const input = form.querySelector('input[name="' + name + '"]:checked');
    return input ? input.value : null;
  }

  function pick(name, value) {
    const input = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (!input || input.disabled) return;
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  form.addEventListener("change", (event) => {
    if (event.target.name !== "choice") return;
    const sided = event.target.value === "left" || event.target.value === "right";
    strengthGroup.disabled = !sided;
    if (!sided) form.querySelectorAll('input[name="strength"]').forEach((input) => (input.checked = false));
  });

  function answerFromForm() {
    const choice = selected("choice");
    if (!choice) {
      hint("Choose first: 1 if A is better, 2 if B is better, 3 for a tie, 4 if both are bad.");
      return null;
    }
    let strength = null;
    let answer = choice;
    if (choice === "left" || choice === "right") {
      strength = selected("strength");
      if (!strength) {
        hint("Say how much better: Q slightly, W clearly, E much better.");
        return null;
      }
      strength = Number(strength);
      // The server speaks of the comparison's responses a and b, whatever side each was on.
      const other = current.shownLeft === "a" ? "b" : "a";
      answer = choice === "left" ? current.shownLeft : other;
    }
    return {
      comparison_id: current.id,
      choice: answer,
      strength: strength,
      rationale: rationale.value.trim(),
      time_spent_ms: Math.max(0, Math.round(performance.now() - current.shownAt)),
      shown_left: current.shownLeft,
    };
  }

  async function submitAnswer() {
    if (!current || advancing || inFlight.has(current.id)) return;
    const answer = answerFromForm();
    if (!answer) return;
    const id = answer.comparison_id;
    inFlight.add(id);
    const sending = post(urls.submit, answer);
    say("Saving…");
    advance();
    const result = await sending;
    inFlight.delete(id);
    if (result.ok) {
      if (result.data.created) todayCount.textContent = String(Number(todayCount.textContent) + 1);
      say("Saved comparison " + id + ".");
    } else {
      warn("Comparison " + id + " was not saved: " + result.message);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitAnswer();
  });

  // Skipping ---------------------------------------------------------------------------------

  function openSkip() {
    if (!current || skipDialog.open) return;
    skipForm.reset();
    skipError.textContent = "";
    skipDialog.showModal();
    const first = skipForm.querySelector('input[name="reason"]:checked');
    if (first) first.focus();
  }

  skipDialog.addEventListener("close", () => {
    if (skipDialog.returnValue === "skip") skipCurrent();
    skipDialog.returnValue = "";
  });

  skipForm.addEventListener("submit", (event) => {
    const submitter = event.submitter;
    if (submitter && submitter.value === "cancel") return;
    const reason = skipForm.querySelector('input[name="reason"]:checked').value;
    if (reason === "Other" && !skipDetails.value.trim()) {
      event.preventDefault();
      skipError.textContent = "Say why in the details box.";
      skipDetails.focus();
    }
  });

  function skipReason() {
    const reason = skipForm.querySelector('input[name="reason"]:checked').value;
    const details = skipDetails.value.trim();
    if (reason === "Other") return details;
    return details ? reason + ": " + details : reason;
  }

  async function skipCurrent() {
    if (!current || inFlight.has(current.id)) return;
    const id = current.id;
    inFlight.add(id);
    const sending = post(urls.skip, { comparison_id: id, reason: skipReason() });
    say("Skipping…");
    advance();
    const result = await sending;
    inFlight.delete(id);
    if (result.ok) say("Skipped comparison " + id + ".");
    else warn("Comparison " + id + " was not skipped: " + result.message);
  }

  skipDialog.addEventListener("keydown", (event) => {
    const inText = event.target === skipDetails;
    if (!inText && /^[1-4]$/.test(event.key)) {
      const options = skipForm.querySelectorAll('input[name="reason"]');
      const option = options[Number(event.key) - 1];
      option.checked = true;
      option.focus();
      event.preventDefault();
    } else if (event.key === "Enter" && (!inText || event.ctrlKey || event.metaKey)) {
      if (event.target.tagName === "BUTTON") return;
      event.preventDefault();
      skipForm.requestSubmit(skipForm.querySelector('button[value="skip"]'));
    }
  });

  // The keyboard -----------------------------------------------------------------------------

  const CHOICE_KEYS = { 1: "left", ArrowLeft: "left", 2: "right", ArrowRight: "right", 3: "tie", 4: "both_bad" };
  const STRENGTH_KEYS = { q: "1", w: "2", e: "3" };

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.altKey || event.isComposing) return;
    if (helpDialog.open || skipDialog.open) return;
    const target = event.target;
    const typing = target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text");
    if (typing) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        submitAnswer();
      } else if (event.key === "Escape") {
        target.blur();
        focusItem();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key === "?") {
      event.preventDefault();
      helpDialog.showModal();
      return;
    }
    if (key === "g") {
      guidelines.open = !guidelines.open;
      return;
    }
    if (!current) return;
    if (CHOICE_KEYS[key]) {
      event.preventDefault();
      pick("choice", CHOICE_KEYS[key]);
    } else if (STRENGTH_KEYS[key]) {
      event.preventDefault();
      if (strengthGroup.disabled) warn("A strength goes with A or B better (1 or 2), not with a tie or both bad.");
      else pick("strength", STRENGTH_KEYS[key]);
    } else if (key === "r") {
      event.preventDefault();
      rationale.focus();
    } else if (key === "s") {
      event.preventDefault();
      openSkip();
    } else if (key === "Enter") {
      // A focused button or link does its own thing with Enter.
      if (target.tagName === "BUTTON" || target.tagName === "A" || target.tagName === "SUMMARY") return;
      event.preventDefault();
      submitAnswer();
    }
  });

  helpDialog.addEventListener("keydown", (event) => {
    if (event.key === "?") {
      event.preventDefault();
      helpDialog.close();
    }
  });
  document.getElementById("help-button").addEventListener("click", () => helpDialog.showModal());
  document.getElementById("skip-button").addEventListener("click", openSkip);
  window.addEventListener("beforeunload", (event) => {
    if (inFlight.size) event.preventDefault();
  });

  // Start ------------------------------------------------------------------------------------

  current = readCurrent();
  resetForm();
  const checkAgain = document.getElementById("check-again");
  if (checkAgain) checkAgain.addEventListener("click", checkAgainClicked);
  if (current) prefetch();
})();
