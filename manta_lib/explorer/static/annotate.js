// Keyboard-first labelling on an item page: digits pick a category, "n" focuses the note,
// Enter saves and opens the next item, "s" skips, "u" undoes the last save or skip.
// Every action submits one of the page's forms (each carries the session's CSRF token).
document.addEventListener("keydown", function (event) {
  var form = document.getElementById("label-form");
  if (!form || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) {
    return;
  }
  var target = event.target;
  var tag = target && target.tagName ? target.tagName.toLowerCase() : "";
  var typing = tag === "textarea" || tag === "select" || target.isContentEditable ||
    (tag === "input" && !/^(radio|checkbox|button|submit)$/i.test(target.type));
  if (event.key === "Enter") {
    if (tag === "textarea" || tag === "button" || tag === "a" || tag === "summary") {
      return;
    }
    if (typing && !form.contains(target)) {
      return; // e.g. the group page's own form
    }
    event.preventDefault();
    form.requestSubmit();
    return;
  }
  if (event.key === "Escape" && typing) {
    target.blur();
    return;
  }
  if (typing) {
    return;
  }
  if (/^[1-9]$/.test(event.key)) {
    var choice = form.querySelector('input[data-key="' + event.key + '"]');
    if (choice) {
      event.preventDefault();
      choice.checked = true;
      choice.focus();
    }
  } else if (event.key === "n") {
    var note = form.querySelector("input[data-note], textarea");
    if (note) {
      event.preventDefault();
      note.focus();
    }
  } else if (event.key === "s") {
    event.preventDefault();
    document.getElementById("skip-form").requestSubmit();
  } else if (event.key === "u") {
    event.preventDefault();
    document.getElementById("undo-form").requestSubmit();
  }
});
