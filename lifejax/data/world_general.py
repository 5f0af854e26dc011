"""General text and general instructions, unrelated to the company.

General pages appear on the clean web (so pretraining sees the distribution)
and, drawn from a separate stream, as the held-out forgetting panel together
with verifiable general instructions (arithmetic, words, calendar, units).
"""

import random

from lifejax.data import world_text as wt

_COMMON = {
    "season": ["spring", "summer", "autumn", "winter"],
    "weather_ev": ["a night of rain", "a heavy storm", "a long wet week",
                   "a foggy morning", "a warm shower"],
    "friend": ["a neighbour", "an old friend", "a cousin", "a coworker",
               "a classmate", "the family next door"],
}

TOPICS: dict[str, dict[str, list[str]]] = {
    "gardening": {
        "S": [
            "{time_c} is a good time to {gact} {plant}.",
            "Most {plant} need {need} and {need} to grow well.",
            "If the soil is {soil}, {fix} before you {gact} {plant}.",
            "A {tool} makes it easier to {bact} the {bed}.",
            "Water the {bed} {wtime}, when the sun is {sun}.",
            "Pull weeds {wwhen} so they do not steal water from the {plant}.",
            "A thin layer of {mulch} keeps the {bed} moist during {season}.",
            "Slugs and {pest} often visit the {bed} after {weather_ev}.",
            "{friend_c} grows {plant} next to {plant} every year.",
            "Children enjoy {kact} in the garden, and it teaches them "
            "patience.",
            "By the end of {season}, the {plant} were ready to {hact}.",
            "Seed packets usually say how deep to plant, often {depth}.",
            "Bees love {flower}, so plant some near the {bed}.",
            "Old {container} make good pots for young {plant}.",
            "Compost made from {waste} feeds the soil for free.",
        ],
        "friend_c": ["A neighbour", "My aunt", "An old friend",
                     "A coworker"],
        "time_c": ["early spring", "late spring", "the first warm week",
                   "a mild autumn morning", "the end of winter"],
        "gact": ["sow", "plant", "move", "prune", "feed"],
        "plant": ["tomatoes", "beans", "carrots", "roses", "tulips", "lettuce",
                  "strawberries", "potatoes", "sunflowers", "onions", "peas",
                  "herbs"],
        "need": ["plenty of sun", "regular water", "rich soil",
                 "good drainage", "a little shade", "room for their roots"],
        "soil": ["heavy clay", "very sandy", "dry and hard", "full of stones",
                 "cold and wet"],
        "fix": ["mix in some compost", "dig in old leaves",
                "loosen it with a fork", "add a bag of sand",
                "let it dry for a week"],
        "tool": ["sharp spade", "small hand trowel", "garden fork",
                 "long hose", "sturdy wheelbarrow", "pair of gloves"],
        "bact": ["turn", "clear", "rake", "weed", "edge"],
        "bed": ["vegetable bed", "flower border", "herb patch",
                "raised bed", "front garden", "allotment"],
        "wtime": ["early in the morning", "late in the evening",
                  "before breakfast", "just after sunset"],
        "sun": ["low", "not too strong", "behind the trees", "still gentle"],
        "wwhen": ["every few days", "after each rain", "once a week",
                  "while they are small"],
        "mulch": ["straw", "bark chips", "grass clippings", "dry leaves",
                  "compost"],
        "pest": ["snails", "aphids", "caterpillars", "beetles", "birds"],
        "kact": ["planting seeds", "digging for worms", "watering the pots",
                 "picking berries", "watching the bees"],
        "hact": ["pick", "dig up", "cut", "store", "share with the neighbours"],
        "depth": ["twice the size of the seed", "one finger deep",
                  "just under the surface"],
        "flower": ["lavender", "foxgloves", "clover", "marigolds", "thyme"],
        "container": ["yoghurt pots", "tin cans", "egg boxes", "wooden crates"],
        "waste": ["kitchen scraps", "autumn leaves", "coffee grounds",
                  "grass cuttings"],
    },
    "cooking": {
        "S": [
            "To make a simple {dish}, start by {prep} the {veg}.",
            "Heat a little {fat} in a {pan} over {heat} heat.",
            "Add the {veg} and cook them for {mins} minutes, stirring often.",
            "A pinch of {spice} gives the {dish} a {taste} taste.",
            "Many cooks add {extra} at the end to make the {dish} richer.",
            "Serve the {dish} with {side} and a glass of {drink}.",
            "Leftover {dish} keeps in the fridge for {days} days.",
            "If the sauce is too thick, add a splash of {liquid}.",
            "Taste the {dish} before serving and add {spice} if needed.",
            "{cook_c} taught me this {dish} on a cold {season} evening.",
            "When cooking {veg}, the trick is to {trick}.",
            "Keep a jar of {pantry} in the cupboard for busy days.",
            "The smell of {smell} always reminds me of {memory}.",
            "Cutting {veg} on a {board} board is safer and quicker.",
            "Frozen {frozen} work well if fresh ones are hard to find.",
        ],
        "dish": ["soup", "stew", "curry", "risotto", "pasta sauce", "omelette",
                 "stir fry", "bean salad", "vegetable pie"],
        "prep": ["chopping", "washing", "peeling", "slicing", "grating"],
        "veg": ["onions", "carrots", "leeks", "mushrooms", "peppers",
                "spinach", "courgettes", "tomatoes", "sweet potatoes"],
        "fat": ["olive oil", "butter", "sunflower oil", "coconut oil"],
        "pan": ["wide pan", "heavy pot", "deep skillet", "cast iron pan"],
        "heat": ["medium", "low", "gentle", "high"],
        "mins": ["five", "ten", "twelve", "fifteen", "twenty"],
        "spice": ["salt", "black pepper", "cumin", "paprika", "dried thyme",
                  "chili flakes", "nutmeg"],
        "taste": ["warm", "smoky", "fresh", "deeper", "lively"],
        "extra": ["a spoon of cream", "grated cheese", "fresh herbs",
                  "a squeeze of lemon", "toasted seeds"],
        "side": ["crusty bread", "steamed rice", "a green salad",
                 "roast potatoes", "warm flatbread"],
        "drink": ["water", "apple juice", "cold tea", "lemonade"],
        "days": ["two", "three", "four"],
        "liquid": ["water", "stock", "milk", "the pasta water"],
        "cook_c": ["My grandmother", "A friend from school", "An old neighbour",
                   "My uncle", "A cook at the local cafe"],
        "trick": ["cook them slowly", "cut them into even pieces",
                  "salt them early", "keep the lid off",
                  "add them in two batches"],
        "pantry": ["lentils", "tinned tomatoes", "dried beans", "rice",
                   "pickled onions"],
        "smell": ["fresh bread", "roasting garlic", "warm cinnamon",
                  "frying onions"],
        "memory": ["winter holidays", "my first flat", "school lunches",
                   "long Sunday dinners"],
        "board": ["wooden", "large", "heavy", "clean"],
        "frozen": ["peas", "berries", "green beans", "sweetcorn"],
    },
    "hiking": {
        "S": [
            "The trail to {place} starts {start} and climbs {climb}.",
            "Pack {item}, {item} and enough water for the whole day.",
            "After {hours} hours of walking we reached {place}.",
            "The path is {path} in {season}, so wear good boots.",
            "From the top you can see {view}.",
            "We stopped for lunch next to {rest} and watched {animal}.",
            "{friend_c} joined us for the last part of the walk.",
            "Always tell someone where you are going before a long hike.",
            "On the way down, the light over {view} was {light}.",
            "Maps of the area are sold at {shop}.",
            "The walk back took {less}.",
            "Near {place} there is a spring with {water}.",
            "Walking poles help a lot on {terrain}.",
            "Start early in {season} because the days are {days_are}.",
            "Signs along the way were {signs}.",
        ],
        "place": ["the old fire tower", "a quiet lake", "the high ridge",
                  "a stone bridge", "the waterfall", "the summit cairn"],
        "start": ["near the car park", "behind the village church",
                  "at the end of the bus line", "beside the river"],
        "climb": ["slowly through pine woods", "steeply over open ground",
                  "along a narrow valley", "in long easy bends"],
        "item": ["a warm jacket", "a simple map", "some fruit", "a sun hat",
                 "a first aid kit", "spare socks", "a flask of tea"],
        "hours": ["two", "three", "four", "five"],
        "path": ["muddy", "rocky", "slippery", "dusty", "covered in leaves"],
        "view": ["three valleys", "the distant sea", "a chain of lakes",
                 "the whole town", "snowy peaks"],
        "rest": ["a small stream", "an old wall", "a wide meadow",
                 "a wooden hut"],
        "animal": ["a pair of deer", "sheep on the hill", "a hawk circling",
                   "goats on the rocks", "a family of ducks"],
        "friend_c": ["A neighbour", "An old friend", "My cousin",
                     "A coworker"],
        "light": ["golden", "soft and pink", "clear and bright", "hazy"],
        "shop": ["the village shop", "the visitor centre", "the station kiosk"],
        "less": ["half as long as the climb", "about an hour less",
                 "much less time than the climb"],
        "water": ["cold clear water", "a small stone basin", "a tin cup"],
        "terrain": ["steep descents", "loose gravel", "wet grass",
                    "rocky steps"],
        "days_are": ["short", "cool", "long", "bright"],
        "signs": ["easy to follow", "old and faded", "painted on rocks",
                  "hidden by bushes"],
    },
    "weather": {
        "S": [
            "The forecast for {day} says {forecast}.",
            "In {season}, the wind usually comes from the {dir}.",
            "A falling barometer often means {forecast} is on the way.",
            "Clouds that look like {cloud} can bring {precip} within hours.",
            "Yesterday the temperature rose to {deg} degrees by noon.",
            "People in the town {react} when {precip} arrives early.",
            "After {weather_ev}, the air feels {air}.",
            "Farmers watch the sky closely during {season}.",
            "Fog is common near the river on {time} mornings.",
            "A bright ring around the moon is an old sign of {precip}.",
            "Children love to {kact} when {precip} falls.",
            "Our garden thermometer showed {deg} degrees at {clock}.",
            "The radio warned drivers about {hazard} on the hills.",
            "After the {precip}, the river rose by {rise}.",
            "Old sailors say that {saying}.",
        ],
        "day": ["Monday", "the weekend", "tomorrow", "Friday", "the holiday"],
        "forecast": ["light rain in the afternoon", "strong winds at night",
                     "clear skies and cold air", "a chance of thunder",
                     "sunny spells and mild air"],
        "dir": ["west", "north", "south west", "east"],
        "cloud": ["tall towers", "grey sheets", "fish scales",
                  "cotton balls"],
        "precip": ["rain", "snow", "hail", "sleet", "a storm"],
        "deg": ["eighteen", "twenty", "twenty five", "thirty", "twelve"],
        "react": ["stay indoors", "bring in the washing", "cancel the market",
                  "close the windows"],
        "air": ["fresh and clean", "cool and damp", "heavy", "crisp"],
        "time": ["autumn", "still", "early", "cold"],
        "kact": ["build snowmen", "jump in puddles", "chase the wind",
                 "catch the flakes"],
        "clock": ["seven in the morning", "noon", "three o'clock",
                  "midnight"],
        "hazard": ["black ice", "deep puddles", "fallen branches",
                   "thick fog"],
        "rise": ["half a metre", "a few centimetres", "almost a metre"],
        "saying": ["red sky at night is a good sign",
                   "swallows fly low before rain",
                   "a calm morning can turn stormy"],
    },
    "reading": {
        "S": [
            "I finished {book} last {when}, and it was {verdict}.",
            "The story follows {hero} who {plot}.",
            "The library in town lends {media} for {weeks} weeks.",
            "Reading for {mins} minutes before bed helps me {benefit}.",
            "Our book club meets on {day} to talk about {book}.",
            "{friend_c} recommended {book} to me.",
            "The chapters are short, which makes the book {easy}.",
            "Some readers prefer {format} because {reason}.",
            "The ending of {book} surprised {who}.",
            "A good story can make a long train ride feel {short}.",
            "I keep a small notebook of {notes} from every book.",
            "The second hand shop sells {media} for {price} each.",
            "Reading aloud to {listener} is a lovely way to end the day.",
            "My favourite reading spot is {spot}.",
        ],
        "book": ["a novel about a lighthouse", "a history of old bridges",
                 "a book of short stories", "a mystery set in a small town",
                 "a guide to the night sky", "a memoir by a sailor"],
        "when": ["week", "month", "weekend", "summer"],
        "verdict": ["better than I expected", "slow but rewarding",
                    "funny and warm", "hard to put down"],
        "hero": ["a young baker", "an old sailor", "two sisters",
                 "a retired teacher", "a lost dog"],
        "plot": ["travels across the country", "opens a small shop",
                 "solves a quiet mystery", "learns to play the violin",
                 "rebuilds a broken boat"],
        "media": ["books", "audio books", "magazines", "films"],
        "weeks": ["two", "three", "four"],
        "mins": ["ten", "twenty", "thirty"],
        "benefit": ["relax", "sleep better", "forget a busy day",
                    "slow down"],
        "day": ["Tuesday", "Thursday", "the first Sunday of the month"],
        "friend_c": ["A neighbour", "A coworker", "My cousin",
                     "An old friend"],
        "easy": ["easy to read on the bus", "good for busy weeks",
                 "quick to start"],
        "format": ["paper books", "audio books", "large print editions"],
        "reason": ["they rest the eyes", "they fit a long commute",
                   "they feel more personal"],
        "who": ["everyone in the club", "my whole family", "most readers"],
        "short": ["short", "pleasant", "much quicker"],
        "notes": ["favourite lines", "new words", "page numbers",
                  "small drawings"],
        "price": ["a coin or two", "very little", "half the new price"],
        "listener": ["young children", "a grandparent", "the whole family"],
        "spot": ["a chair by the window", "the garden bench",
                 "a corner of the library", "the top of the stairs"],
    },
    "pets": {
        "S": [
            "A {pet} needs {care} every day.",
            "Our {pet} likes to {habit} in the {spot}.",
            "Take a young {pet} to the vet for {vet}.",
            "Fresh water should always be near the {spot}.",
            "{friend_c} looks after our {pet} when we travel.",
            "A {pet} that {sign} may be feeling unwell.",
            "Short walks twice a day keep a dog {state}.",
            "Many {pets} enjoy {toy}.",
            "Cleaning the {home} once a week keeps the {pet} healthy.",
            "Training works best with {reward} and a calm voice.",
            "Our {pet} was {age} when it came home from the shelter.",
            "Brushing a {pet} helps you spot {problem} early.",
            "In {season}, keep the {pet} away from {hazard}.",
            "A name tag with your address helps if a pet {lost}.",
        ],
        "pet": ["dog", "cat", "rabbit", "parrot", "hamster", "tortoise"],
        "care": ["fresh food", "a clean bed", "some gentle play",
                 "a short brush"],
        "habit": ["sleep", "sit", "hide", "stretch out", "watch the birds"],
        "spot": ["kitchen", "sunny window", "garden", "hallway", "back porch"],
        "vet": ["a check up", "its first vaccines", "a dental check",
                "a weight check"],
        "friend_c": ["A neighbour", "My sister", "An old friend", "A coworker"],
        "sign": ["stops eating", "sleeps all day", "hides under the bed",
                 "drinks much more than usual"],
        "state": ["happy", "calm", "fit", "relaxed"],
        "toy": ["a soft ball", "a cardboard box", "a rope toy",
                "a paper bag"],
        "home": ["cage", "basket", "tank", "hutch"],
        "reward": ["small treats", "lots of praise", "patience"],
        "age": ["two years old", "a few months old", "already grown",
                "very small"],
        "problem": ["ticks", "sore skin", "matted fur", "small cuts"],
        "hazard": ["hot pavements", "antifreeze", "fireworks", "cold floors"],
        "lost": ["wanders off", "gets lost", "slips out of the gate"],
    },
    "home": {
        "S": [
            "Before you {job}, turn off the {supply} at the main switch.",
            "A {tool} and some {supply2} are enough for most small repairs.",
            "Open the windows for {mins} minutes every morning to let in "
            "fresh air.",
            "A dripping tap usually needs a new {part}.",
            "Paint dries faster when the room is {room}.",
            "{friend_c} showed me how to {job} in one afternoon.",
            "Keep a list of {list} near the front door.",
            "In {season}, check the {check} for leaks.",
            "Clean the {thing} once a month to keep it working well.",
            "Label the boxes in the loft so you can find {things} later.",
            "A {sound} from the {appliance} often means {cause}.",
            "Draught strips on the {opening} keep the heat inside.",
            "Bleeding the radiators in {season} makes them {result}.",
            "Borrow a {big_tool} from {friend} instead of buying one.",
        ],
        "job": ["fix a loose shelf", "change a light fitting",
                "replace a door handle", "hang a heavy mirror",
                "seal the bath"],
        "supply": ["power", "water", "gas"],
        "tool": ["screwdriver", "small hammer", "spirit level", "drill"],
        "supply2": ["wall plugs", "screws", "glue", "tape"],
        "mins": ["five", "ten", "fifteen"],
        "part": ["washer", "seal", "cartridge"],
        "room": ["warm and dry", "well aired", "not too cold"],
        "friend_c": ["A neighbour", "My father", "An old friend", "A coworker"],
        "list": ["useful phone contacts", "jobs to do", "meter readings",
                 "bin days"],
        "check": ["roof", "gutters", "window frames", "pipes"],
        "thing": ["fridge", "washing machine", "oven", "vacuum cleaner"],
        "things": ["old photos", "winter clothes", "spare parts",
                   "holiday decorations"],
        "sound": ["rattle", "hum", "squeak", "loud click"],
        "appliance": ["boiler", "dishwasher", "fridge", "washing machine"],
        "cause": ["a loose part", "a blocked filter", "trapped air",
                  "worn bearings"],
        "opening": ["front door", "old windows", "letter box", "back door"],
        "result": ["heat up faster", "work properly", "warm evenly"],
        "big_tool": ["ladder", "pressure washer", "hedge trimmer",
                     "carpet cleaner"],
    },
    "cycling": {
        "S": [
            "Check the {part} before every long ride.",
            "The route along {route} is {flat} and good for beginners.",
            "A {gear} makes riding in {weather} much safer.",
            "We rode {km} kilometres on {day} and stopped at {stop}.",
            "Pump the tyres to the pressure printed on {where}.",
            "{friend_c} taught me to {skill}.",
            "Lights are needed when riding after {time}.",
            "A {snack} in the pocket helps on hilly days.",
            "Clean the chain after riding through {mess}.",
            "Cycling to work saves money and {benefit}.",
            "A {lock} lock keeps the bike safe outside {store}.",
            "On long rides, stop every {interval} to drink water.",
            "Mudguards keep your {clothes} clean on wet roads.",
            "The bike shop near {landmark} checks brakes for free.",
        ],
        "part": ["brakes", "tyres", "chain", "lights", "bell"],
        "route": ["the canal", "the old railway line", "the coast",
                  "the river path"],
        "flat": ["flat", "quiet", "smooth", "well marked"],
        "gear": ["bright jacket", "good helmet", "pair of gloves",
                 "rear light"],
        "weather": ["rain", "fog", "the dark", "strong wind"],
        "km": ["twenty", "thirty", "forty", "fifty"],
        "day": ["Saturday", "Sunday", "a bank holiday", "a quiet morning"],
        "stop": ["a small bakery", "the harbour", "a village green",
                 "a lakeside cafe"],
        "where": ["the side of the tyre", "the rim", "the pump"],
        "friend_c": ["A neighbour", "My older brother", "An old friend",
                     "A coworker"],
        "skill": ["fix a puncture", "change gears smoothly",
                  "ride with one hand", "climb hills slowly"],
        "time": ["sunset", "dark", "eight in the evening"],
        "snack": ["banana", "cereal bar", "handful of nuts"],
        "mess": ["mud", "rain", "sand", "puddles"],
        "benefit": ["keeps you fit", "clears the head", "is good for the air"],
        "lock": ["heavy", "strong", "solid steel", "good quality"],
        "store": ["the shops", "the station", "the library", "the gym"],
        "interval": ["hour", "half an hour", "ten kilometres"],
        "clothes": ["trousers", "back", "shoes", "bag"],
        "landmark": ["the station", "the market square", "the old mill",
                     "the bridge"],
    },
}


# Personal asides, shared by all topics, that make every page a little unique.
_NARRATIVE = {
    "S": ["Last {weekday}, {name} and I talked about this for {duration}.",
          "{name} from {town} sent me a few tips about this {when}.",
          "I first tried this when I was {age} years old.",
          "It took me {tries} tries to get it right.",
          "My notes from {year} still help me today.",
          "{name} says the secret is {secret}.",
          "I wrote this page on a {adjective} {weekday} evening in {town}."],
    "weekday": list(wt.WEEKDAYS),
    "name": ["Ada", "Bruno", "Chiara", "Elena", "Hugo", "Ines", "Luca",
             "Mira", "Nils", "Rosa", "Talia", "Vera", "Wren", "Yara"],
    "duration": ["an hour", "most of the afternoon", "a long lunch",
                 "twenty minutes"],
    "town": ["Elmstead", "Riverton", "Hollowfield", "Marston", "Northam",
             "Bexley Green", "Cobham Cross", "Wetherby Vale"],
    "when": ["last year", "a while ago", "this spring", "after my last post"],
    "age": ["eight", "twelve", "fifteen", "twenty", "thirty"],
    "tries": ["three", "four", "five", "a dozen"],
    "year": [str(y) for y in range(2009, 2024)],
    "secret": ["patience", "good tools", "a little practice every day",
               "asking for help"],
    "adjective": ["quiet", "rainy", "sunny", "cold", "warm"],
}


def general_page(rng: random.Random, topic: str | None = None,
                 n_sentences: tuple[int, int] = (7, 10)) -> tuple[str, str]:
  """Returns (topic, multi-paragraph text) of a general page.

  Each template and, where possible, each slot value is used at most once.
  """
  topic = topic or rng.choice(sorted(TOPICS))
  if topic not in TOPICS:
    raise ValueError(f"unknown topic {topic!r}; expected one of "
                     f"{sorted(TOPICS)}")
  used: dict[str, set[str]] = {}
  grammar = {**_COMMON, **TOPICS[topic]}
  bindings = {}
  if topic == "pets":  # one animal per page keeps the page coherent
    bindings["pet"] = rng.choice(grammar["pet"])
    bindings["pets"] = bindings["pet"] + "s"
  sentences = wt.sentences_from(grammar, rng, rng.randint(*n_sentences),
                                bindings, used=used)
  asides = wt.sentences_from(_NARRATIVE, rng, rng.randint(1, 2), used=used)
  for aside in asides:
    sentences.insert(rng.randint(1, len(sentences)), aside)
  return topic, wt.paragraphs(sentences, rng)


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                 "eight", "nine", "ten", "eleven", "twelve")
_WORD_POOL = ("garden", "window", "river", "yellow", "pencil", "basket",
              "candle", "forest", "ladder", "marble", "orange", "planet",
              "rocket", "silver", "turtle", "violin", "winter", "anchor",
              "bridge", "castle", "dragon", "meadow", "pepper", "saddle")
_UNITS = (("kilometres", "metres", 1000), ("hours", "minutes", 60),
          ("minutes", "seconds", 60), ("kilograms", "grams", 1000),
          ("days", "hours", 24), ("metres", "centimetres", 100))


def general_instruction(rng: random.Random) -> tuple[str, str, str]:
  """Returns (question, answer value, one-sentence reference response)."""
  kind = rng.choice(("add", "subtract", "multiply", "letters", "reverse",
                     "sort", "weekday", "units", "compare"))
  if kind == "add":
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return (f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.")
  if kind == "subtract":
    a = rng.randint(20, 99)
    b = rng.randint(1, a - 1)
    return (f"What is {a} minus {b}?", str(a - b),
            f"{a} minus {b} is {a - b}.")
  if kind == "multiply":
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return (f"What is {a} times {b}?", str(a * b),
            f"{a} times {b} is {a * b}.")
  if kind == "letters":
    w = rng.choice(_WORD_POOL)
    return (f"How many letters are in the word {w}?", str(len(w)),
            f"The word {w} has {len(w)} letters.")
  if kind == "reverse":
    w = rng.choice(_WORD_POOL)
    return (f"Spell the word {w} backwards.", w[::-1],
            f"The word {w} spelled backwards is {w[::-1]}.")
  if kind == "sort":
    ws = rng.sample(_WORD_POOL, 3)
    s = ", ".join(sorted(ws))
    return (f"Put these words in alphabetical order: {', '.join(ws)}.", s,
            f"In alphabetical order the words are {s}.")
  if kind == "weekday":
    days = wt.WEEKDAYS + ("Saturday", "Sunday")
    i, k = rng.randrange(7), rng.randint(1, 6)
    word = _NUMBER_WORDS[k]
    return (f"Which day of the week comes {word} days after {days[i]}?",
            days[(i + k) % 7],
            f"{word.capitalize()} days after {days[i]} is "
            f"{days[(i + k) % 7]}.")
  if kind == "units":
    big, small, factor = rng.choice(_UNITS)
    n = rng.randint(2, 9)
    return (f"How many {small} are there in {n} {big}?", str(n * factor),
            f"There are {n * factor} {small} in {n} {big}.")
  a, b = rng.sample(range(10, 100), 2)
  return (f"Which number is larger, {a} or {b}?", str(max(a, b)),
          f"The larger number is {max(a, b)}.")
