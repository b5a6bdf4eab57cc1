// capitu serve's page: plain DOM, no libraries; model text is always set as textContent. T: the page's words
// in its language (page.toml).
const $ = (id) => document.getElementById(id);
const views = ["side", "blind", "ranking", "quality"];
let pair = null;

function show(view) {
  for (const v of views) {
    $(v).classList.toggle("hidden", v !== view);
    $("tab-" + v).classList.toggle("on", v === view);
  }
  if (view === "ranking") loadRanking();
}
for (const v of views) $("tab-" + v).onclick = () => show(v);

function settings() {
  return {prompt: $("prompt").value, temperature: +$("temperature").value, top_k: +$("top_k").value,
          top_p: +$("top_p").value, new_tokens: +$("new_tokens").value, seed: +$("seed").value};
}

// an API error in the page's language: its words for the error's code, filled with its values (a list names request
// fields, shown by their labels); the API's English where the page has no words for it
function problem(answer) {
  const words = T.errors[answer.code];
  if (!words) return new Error(answer.error);
  return new Error(words.replace(/\{(\w+)\}/g, (_, key) => {
    const value = answer.values[key];
    return Array.isArray(value) ? value.map((field) => T[field] || field).join(", ") : value;
  }));
}

async function post(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
  if (!response.ok) throw problem(await response.json().catch(() => ({error: response.statusText})));
  return response;
}

async function stream(column) {
  const text = column.querySelector(".text"), rate = column.querySelector(".rate");
  text.textContent = ""; rate.textContent = "…";
  const response = await post("/api/generate", {model: column.dataset.model, ...settings()});
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = JSON.parse(buffer.slice(6, end)); buffer = buffer.slice(end + 2);
      if (event.error) throw problem(event);
      if (event.done) { text.textContent = event.text; rate.textContent = event.tokens_per_s.toFixed(0) + " tokens/s"; }
      else text.textContent += event.text;
    }
  }
}

$("generate").onclick = async () => {
  $("error").textContent = "";
  try { for (const column of document.querySelectorAll("#side .column")) await stream(column); }
  catch (error) { $("error").textContent = error.message; }
};

$("draw").onclick = async () => {  // one draw at a time: a second click (or key) waits for the button
  $("draw").disabled = true; $("choices").classList.add("hidden"); pair = null;
  $("error").textContent = ""; $("verdict").textContent = "";
  for (const side of ["a", "b"]) { $("text-" + side).textContent = "…"; $("name-" + side).textContent = ""; }
  try {
    const drawn = await (await post("/api/blind", settings())).json();
    pair = drawn.pair; $("text-a").textContent = drawn.a; $("text-b").textContent = drawn.b;
    $("choices").classList.remove("hidden");
  } catch (error) { $("error").textContent = error.message; }
  $("draw").disabled = false;
};

for (const button of document.querySelectorAll("#choices button")) {
  button.onclick = async () => {  // one vote a pair: a second click (or key) finds no pair
    if (pair === null) return;
    const judged = pair; pair = null;
    try {
      const result = await (await post("/api/vote", {pair: judged, choice: button.dataset.choice})).json();
      $("name-a").textContent = "(" + result.a + ")"; $("name-b").textContent = "(" + result.b + ")";
      $("verdict").textContent = T.recorded + button.textContent + ".";
      $("choices").classList.add("hidden");
    } catch (error) { $("error").textContent = error.message; }
  };
}

// blind judging from the keyboard: n draws a pair, 1-4 vote (A, B, tie, both bad) while a pair waits; not while
// typing in a field, nor with a modifier held (the browser's own shortcuts)
document.addEventListener("keydown", (event) => {
  if ($("blind").classList.contains("hidden") || event.target.closest("input, textarea") ||
      event.ctrlKey || event.metaKey || event.altKey) return;
  const choices = document.querySelectorAll("#choices button");
  if (event.key === "n" && !$("draw").disabled) $("draw").click();
  else if ("1234".includes(event.key) && !$("choices").classList.contains("hidden")) choices[+event.key - 1].click();
});

function table(element, head, rows) {
  element.replaceChildren();
  const header = element.insertRow();
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; header.appendChild(th); }
  for (const row of rows) { const tr = element.insertRow(); for (const cell of row) tr.insertCell().textContent = cell; }
}

async function loadRanking() {
  const result = await (await fetch("/api/ranking")).json();
  $("ranking-summary").textContent = result.votes + " " + (result.votes === 1 ? T.vote : T.votes) + ". " +
    (T.method || result.method || "");
  table($("ranking-table"), T.ranking_head,
        result.models.map((m) => [m.model, m.score.toFixed(0), m.low.toFixed(0) + "–" + m.high.toFixed(0),
                                  m.votes, m.wins, m.losses, m.ties, m.both_bad]));
}

$("measure").onclick = async () => {
  $("measure").disabled = true;
  try {
    const response = await fetch("/api/quality");
    const result = await response.json();
    if (!response.ok) throw problem(result);
    const pct = (x) => x === null ? "—" : (100 * x).toFixed(1) + "%";
    table($("quality-table"), T.quality_head,
          result.models.map((m) => [m.model, pct(m.known_words), pct(m.distinct_1), pct(m.distinct_2),
                                    pct(m.repeated_4grams), m.mean_words.toFixed(1)]));
  } catch (error) { $("error").textContent = error.message; }
  $("measure").disabled = false;
};
