"""The HTML report's style sheet and script, inline in every page (the page fetches nothing).

The script is what makes a big graph readable: a click on a kernel's box
opens its drill-down (member ops, refusals, Triton source), links in the
tables jump to the box or arrow they name, and the search box marks every op,
kernel and table row that matches. It records script errors on
`body[data-fusec-errors]`, the number of search hits on `body[data-fusec-hits]`
and, once set up, the number of launch boxes on `body[data-fusec-ready]`, so a
headless browser can check that the page works. `report.html#search=h.3.mlp`
opens the page with that search done, `report.html#inference_0:kernel:k3` with
that kernel's drill-down open.
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5em 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, monospace; font-size: .85em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.graph { overflow: auto; border: 1px solid #eee; max-height: 80vh; }
.split { display: grid; grid-template-columns: minmax(12em, max-content) minmax(0, 1fr); gap: 1em; align-items: start; }
.split .tables { overflow: auto; max-height: 80vh; }
.split .tables h3 { margin-top: 0; }
.fallback { color: #a93226; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; border: 2px solid #999; }
details summary { cursor: pointer; }
details.drill { border-left: 3px solid #ddd; padding-left: .6em; margin: .3em 0; }
.toolbar { position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #eee; z-index: 1; }
.toolbar input { width: 28em; font-size: 1em; padding: .2em .4em; }
.step.kernel { cursor: pointer; }
.hit rect, .hit polygon, .hit path { stroke: #e91e63 !important; stroke-width: 4px !important; }
tr.hit td { background: #fde2ec; }
.focus rect, .focus polygon, .focus path, path.focus { stroke: #ff00ff !important; stroke-width: 5px !important; }
details.focus, tr.focus td { background: #fff3c4; }
"""

SCRIPT = r"""
(function () {
  var body = document.body, errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message));
    body.setAttribute('data-fusec-errors', errors.join(' | '));
  });
  function openTo(el) {
    for (var p = el; p; p = p.parentElement) { if (p.tagName === 'DETAILS') p.open = true; }
  }
  function focus(el) {
    document.querySelectorAll('.focus').forEach(function (x) { x.classList.remove('focus'); });
    el.classList.add('focus');
    openTo(el);
    el.scrollIntoView({block: 'center', inline: 'center'});
  }
  function go(id) {
    var el = document.getElementById(id);
    if (el) focus(el);
    return !!el;
  }
  document.addEventListener('click', function (ev) {
    var step = ev.target.closest('.step.kernel');
    if (step) {
      ev.preventDefault();
      go(step.id.replace(':step:', ':kernel:'));
      return;
    }
    var link = ev.target.closest('a[href^="#"]');
    if (link && go(decodeURIComponent(link.getAttribute('href').slice(1)))) ev.preventDefault();
  });
  var box = document.getElementById('fusec-search'), count = document.getElementById('fusec-hits');
  var hits = [], at = -1;
  function search() {
    var query = box.value.trim().toLowerCase();
    hits = [];
    at = -1;
    document.querySelectorAll('.step, .op, .member, tr[data-search]').forEach(function (el) {
      var text = (el.getAttribute('data-search') || el.textContent).toLowerCase();
      var hit = query !== '' && text.indexOf(query) >= 0;
      el.classList.toggle('hit', hit);
      if (hit) hits.push(el);
    });
    count.textContent = query ? hits.length + ' found' + (hits.length ? ' (Enter: next)' : '') : '';
    body.setAttribute('data-fusec-hits', String(hits.length));
  }
  box.addEventListener('input', search);
  box.addEventListener('keydown', function (ev) {
    if (ev.key !== 'Enter' || !hits.length) return;
    at = (at + 1) % hits.length;
    focus(hits[at]);
  });
  var asked = /^#search=(.*)$/.exec(location.hash);  // a link can carry a search: report.html#search=h.3.mlp
  if (asked) {
    box.value = decodeURIComponent(asked[1]);
    search();
    if (hits.length) focus(hits[at = 0]);
  } else if (location.hash.length > 1) {  // report.html#inference_0:kernel:k3 opens that kernel's drill-down
    go(decodeURIComponent(location.hash.slice(1)));
  }
  body.setAttribute('data-fusec-ready', String(document.querySelectorAll('svg.fusec-overview .step').length));
})();
"""
