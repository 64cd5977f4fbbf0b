"""Small built-in word lists (no downloads): needle keys, words drawn in images, GUI labels."""

ADJECTIVES = (
    "amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly", "kind", "lucky",
    "mellow", "noisy", "odd", "proud", "quiet", "rapid", "silent", "tidy", "urban", "vivid", "witty", "young",
    "zesty", "bold", "crisp", "faint", "grand", "humble",
)
NOUNS = (
    "otter", "falcon", "harbor", "lantern", "meadow", "canyon", "violin", "pepper", "glacier", "comet", "walrus",
    "orchid", "anchor", "beacon", "cactus", "dolphin", "ember", "fjord", "garnet", "hazel", "island", "jackal",
    "kettle", "lagoon", "marble", "nectar", "oasis", "parrot", "quartz", "raven",
)

# Short, common words for images (drawn text, video frames, typed text). All lowercase ASCII.
WORDS = (
    "apple", "river", "cloud", "stone", "piano", "tiger", "lemon", "house", "train", "robot", "bread", "chair",
    "light", "ocean", "plant", "smile", "storm", "sugar", "table", "water", "zebra", "mango", "honey", "night",
    "paper", "queen", "radio", "snake", "tower", "wheel",
)

# GUI vocabulary.
WINDOW_TITLES = (
    "Untitled - Editor", "Settings", "Mail", "File Manager", "Preferences", "Account", "Project", "Inbox",
    "Photo Viewer", "Notes",
)
MENUS = ("File", "Edit", "View", "Insert", "Format", "Tools", "Window", "Help")
TOOLBAR_ICONS = ("New", "Open", "Save", "Print", "Trash", "Search", "Settings", "Share", "Undo", "Redo")
BUTTONS = ("OK", "Cancel", "Apply", "Save", "Help", "Close", "Next", "Back", "Open", "Delete", "Reset", "Submit")
DIALOG_BUTTONS = ("OK", "Cancel", "Yes", "No", "Save", "Don't Save", "Retry", "Close")
DIALOG_TITLES = ("Confirm", "Save changes?", "Warning", "Rename", "Error", "Question")
DIALOG_MESSAGES = (
    "Do you want to save your changes?", "Are you sure?", "The file already exists.", "Enter a new name.",
    "Something went wrong.", "Continue with this action?",
)
FIELDS = ("Name", "Email", "Password", "Username", "Address", "City", "Phone", "Search", "Title", "Comment")
DIALOG_FIELDS = ("Name", "File name", "Title", "Comment")
CHECKBOXES = (
    "Remember me", "Enable notifications", "Dark mode", "Auto-save", "Show hidden files", "Send usage data",
    "Keep me signed in", "Spell check",
)
# list label -> item vocabulary
LISTS = {
    "file": ("report.pdf", "notes.txt", "photo.png", "budget.xlsx", "main.py", "README.md", "song.mp3",
             "draft.docx", "data.csv", "logo.svg", "video.mp4", "index.html", "todo.txt", "slides.pptx"),
    "contacts": ("Alice Martin", "Bob Chen", "Carla Diaz", "David Okafor", "Eva Novak", "Farid Haddad",
                 "Grace Kim", "Hugo Silva", "Ines Rossi", "Jon Berg", "Kira Sato", "Liam Walsh"),
    "message": ("Meeting at 10", "Lunch?", "Invoice #4411", "Re: slides", "Weekly report", "Welcome!",
                "Password reset", "Trip photos", "Quick question", "Build failed", "New comment", "Reminder"),
}
TYPED_TEXT = (
    "hello", "Alice", "bob@example.com", "42 Main St", "Paris", "secret123", "555-0100", "report", "My notes",
    "quarterly budget", "Berlin", "test", "draft 2",
)


def gui_labels() -> tuple:
    """Every label a GUI element can carry (element labels, list names), sorted: the classes of training's
    per-patch label head (msa_lab.train.PATCH_HEADS "gui_label")."""
    return tuple(sorted(set(WINDOW_TITLES + MENUS + TOOLBAR_ICONS + BUTTONS + DIALOG_BUTTONS + DIALOG_TITLES + FIELDS
                            + DIALOG_FIELDS + CHECKBOXES + tuple(LISTS))))
